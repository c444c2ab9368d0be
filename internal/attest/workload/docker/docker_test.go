package docker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/agent/workloadattest"
	"github.com/sigil-spiffe/sigil/internal/attest/workload/cgroup"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/testutil/fakedocker"
)

const (
	ctrID    = "7970af05857ce6a04845fe9b9075e704122318bd3245b5bc1a00301160aea400"
	otherID  = "51a26816221d284f3eeca29d1cc373d81a22813df09aa83a3cb031320a3f67ff"
	imageID  = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	workload = 4242 // the calling process
	ctrInit  = 4100 // the container's init (State.Pid)
)

// procRoot writes a proc root: cgroup file contents by PID.
func procRoot(t *testing.T, cgroups map[int]string) string {
	t.Helper()
	dir := t.TempDir()
	for pid, content := range cgroups {
		p := filepath.Join(dir, strconv.Itoa(pid))
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "cgroup"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// systemd driver on cgroup v2 (see internal/attest/workload/cgroup/testdata).
func scope(id string) string { return "0::/system.slice/docker-" + id + ".scope\n" }

func webContainer() fakedocker.Container {
	return fakedocker.Container{
		ID: ctrID, Pid: ctrInit, Image: "registry.example.org/web:1.4", ImageID: imageID,
		Labels: map[string]string{"com.example.app": "web", "tier": "front:end", "empty": ""},
		Env:    []string{"PATH=/usr/local/bin:/usr/bin", "APP_MODE=prod", "EQ=a=b"},
	}
}

func newTest(t *testing.T, d *fakedocker.Daemon, cgroups map[int]string, mod func(*Config)) *Attestor {
	t.Helper()
	cfg := Config{SocketPath: d.URL(), ProcDir: procRoot(t, cgroups)}
	if mod != nil {
		mod(&cfg)
	}
	a := New(cfg)
	a.retries = []time.Duration{time.Millisecond, time.Millisecond, time.Millisecond}
	t.Cleanup(func() { _ = a.Close() })
	return a
}

func values(sels []selector.Selector) []string {
	var out []string
	for _, s := range sels {
		out = append(out, s.String())
	}
	return out
}

func TestAttestContainer(t *testing.T) {
	d := fakedocker.Start(t)
	d.Add(webContainer())
	// The workload runs in a sub-cgroup of the container's scope (systemd
	// in the container), the init in the scope itself.
	a := newTest(t, d, map[int]string{
		workload: "0::/system.slice/docker-" + ctrID + ".scope/system.slice/app.service\n",
		ctrInit:  scope(ctrID),
	}, nil)
	sels, err := a.Attest(context.Background(), workload)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"docker:env:APP_MODE=prod",
		"docker:env:EQ=a=b",
		"docker:env:PATH=/usr/local/bin:/usr/bin",
		"docker:image_config_digest:" + imageID,
		"docker:image_id:registry.example.org/web:1.4",
		"docker:label:com.example.app:web",
		"docker:label:empty:",
		"docker:label:tier:front:end",
	}
	if got := values(sels); !slices.Equal(got, want) {
		t.Fatalf("selectors\n%q\nwant\n%q", got, want)
	}
	// Each is accepted by the kind an entry's selectors are checked with.
	r, err := selector.NewRegistry(SelectorKinds()...)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sels {
		if err := r.Check(s); err != nil {
			t.Errorf("produced %s, which SelectorKinds refuses: %v", s, err)
		}
	}
	// The version is negotiated once.
	if _, err := a.Attest(context.Background(), ctrInit); err != nil {
		t.Fatal(err)
	}
	wantReq := []string{"GET /_ping", "GET /v1.47/containers/" + ctrID + "/json", "GET /v1.47/containers/" + ctrID + "/json"}
	if got := d.Requests(); !slices.Equal(got, wantReq) {
		t.Fatalf("requests %q, want %q", got, wantReq)
	}
}

// A process in no container, or in one the engine does not know, gets no
// docker selectors and no error; the former without a request.
func TestAttestNotDockerWorkload(t *testing.T) {
	d := fakedocker.Start(t)
	a := newTest(t, d, map[int]string{
		workload: "0::/user.slice/user-1000.slice/session-3.scope\n",
		ctrInit:  "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod28a98c5c_748b_46b4_966b_155b4067c70c.slice/cri-containerd-" + otherID + ".scope\n",
	}, nil)
	for _, pid := range []int32{workload, ctrInit} {
		sels, err := a.Attest(context.Background(), pid)
		if err != nil || sels != nil {
			t.Fatalf("pid %d: Attest = %v, %v; want nothing", pid, sels, err)
		}
	}
	if got := d.Requests(); !slices.Equal(got, []string{"GET /_ping", "GET /v1.47/containers/" + otherID + "/json"}) {
		t.Fatalf("requests %q", got)
	}
	// This test's own process, through the real /proc.
	if sels, err := New(Config{SocketPath: d.URL()}).Attest(context.Background(), int32(os.Getpid())); err != nil || sels != nil {
		t.Logf("this process (in a container?): %v, %v", sels, err)
	}
}

// A cgroup named after a container in a user's delegated subtree does not
// get the container's selectors.
func TestAttestRefusesForgedCgroup(t *testing.T) {
	d := fakedocker.Start(t)
	d.Add(webContainer())
	a := newTest(t, d, map[int]string{
		workload: "0::/user.slice/user-1000.slice/user@1000.service/app.slice/" + ctrID + "\n",
		ctrInit:  scope(ctrID),
	}, nil)
	sels, err := a.Attest(context.Background(), workload)
	want := "its cgroups (/user.slice/user-1000.slice/user@1000.service/app.slice/" + ctrID + ") name container " + ctrID +
		", whose processes are in /system.slice/docker-" + ctrID + ".scope"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Attest = %v, %v; want error containing %q", values(sels), err, want)
	}
}

func TestAttestRefusesUnverifiable(t *testing.T) {
	d := fakedocker.Start(t)
	stopped := webContainer()
	stopped.Pid = 0
	d.Add(stopped)
	a := newTest(t, d, map[int]string{workload: scope(ctrID)}, nil)
	if _, err := a.Attest(context.Background(), workload); err == nil || !strings.Contains(err.Error(), "is not running (State.Pid 0)") {
		t.Fatalf("stopped container: error %v", err)
	}
	d.Add(webContainer()) // init 4100 is not in this proc root
	if _, err := a.Attest(context.Background(), workload); err == nil ||
		!strings.Contains(err.Error(), "its init process (State.Pid 4100) cannot be located") || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("init not visible: error %v", err)
	}
}

// A daemon that accepts the connection but never answers: the attestor
// fails with its own precise error inside the attestation set's deadline,
// so the set reports the plugin's failure, not a timeout.
func TestAttestHungDaemon(t *testing.T) {
	d := fakedocker.Start(t)
	d.Add(webContainer())
	d.Hang()
	a := newTest(t, d, map[int]string{workload: scope(ctrID), ctrInit: scope(ctrID)}, func(c *Config) { c.RequestTimeout = 200 * time.Millisecond })
	set, err := workloadattest.New(workloadattest.Config{Plugins: []workloadattest.Plugin{{Name: "docker", Attestor: a}}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = set.Attest(context.Background(), workload)
	var ae *workloadattest.Error
	if !errors.As(err, &ae) || len(ae.Failures) != 1 || ae.Failures[0].TimedOut {
		t.Fatalf("Attest error %v, want one plugin failure that is not a timeout", err)
	}
	want := "docker attestor: pid 4242: container " + ctrID + ": GET /_ping: no answer from the Engine API at " + d.Socket + " within 200ms"
	if got := ae.Failures[0].Err.Error(); got != want {
		t.Fatalf("plugin error\n%s\nwant\n%s", got, want)
	}
	// Once the daemon answers again, so does the attestor.
	d.Release()
	if _, err := a.Attest(context.Background(), workload); err != nil {
		t.Fatal(err)
	}
}

func TestAttestDaemonDownAndRestarting(t *testing.T) {
	d := fakedocker.Start(t)
	d.Add(webContainer())
	cg := map[int]string{workload: scope(ctrID), ctrInit: scope(ctrID)}
	a := newTest(t, d, cg, func(c *Config) { c.SocketPath = "unix://" + filepath.Join(t.TempDir(), "none.sock") })
	if _, err := a.Attest(context.Background(), workload); err == nil || !strings.Contains(err.Error(), "GET /_ping: dial unix") ||
		!strings.Contains(err.Error(), "no such file or directory") {
		t.Fatalf("no daemon: error %v", err)
	}
	// 500s while the daemon restarts are retried (three times).
	a = newTest(t, d, cg, nil)
	d.FailNext(3)
	if _, err := a.Attest(context.Background(), workload); err != nil {
		t.Fatal(err)
	}
	d.FailNext(4)
	if _, err := a.Attest(context.Background(), workload); err == nil || !strings.Contains(err.Error(), "HTTP 500: Cannot connect to the Docker daemon") {
		t.Fatalf("error %v", err)
	}
}

func TestAttestVersions(t *testing.T) {
	d := fakedocker.Start(t)
	d.Add(webContainer())
	cg := map[int]string{workload: scope(ctrID), ctrInit: scope(ctrID)}
	// An older daemon: its version is used.
	d.SetAPIVersions("1.41", "1.12")
	a := newTest(t, d, cg, nil)
	if _, err := a.Attest(context.Background(), workload); err != nil {
		t.Fatal(err)
	}
	// Upgraded to one that dropped 1.41: refused once, precisely, then
	// negotiated again.
	d.SetAPIVersions("1.52", "1.44")
	if _, err := a.Attest(context.Background(), workload); err == nil ||
		!strings.Contains(err.Error(), "HTTP 400: client version 1.41 is too old. Minimum supported API version is 1.44") {
		t.Fatalf("error %v", err)
	}
	if _, err := a.Attest(context.Background(), workload); err != nil {
		t.Fatal(err)
	}
	reqs := d.Requests()
	if want := "GET /v1.52/containers/" + ctrID + "/json"; reqs[len(reqs)-1] != want || reqs[len(reqs)-2] != "GET /_ping" {
		t.Fatalf("requests %q, want a new ping then %s", reqs, want)
	}
	// docker_version is used as it is, without a ping.
	a = newTest(t, d, cg, func(c *Config) { c.Version = "1.53" })
	if _, err := a.Attest(context.Background(), workload); err == nil ||
		!strings.Contains(err.Error(), "client version 1.53 is too new. Maximum supported API version is 1.52") {
		t.Fatalf("error %v", err)
	}
	// A daemon too old for this client.
	d.SetAPIVersions("1.23", "1.12")
	a = newTest(t, d, cg, nil)
	if _, err := a.Attest(context.Background(), workload); err == nil || !strings.Contains(err.Error(), "the daemon speaks Engine API 1.23, older than 1.24") {
		t.Fatalf("error %v", err)
	}
}

// Podman containers are asked of Podman's socket: the user's (from the
// template) when rootless.
func TestAttestPodman(t *testing.T) {
	docker := fakedocker.Start(t)
	dir := fakedocker.ShortDir(t)
	if err := os.Mkdir(filepath.Join(dir, "1000"), 0o755); err != nil {
		t.Fatal(err)
	}
	rootless := fakedocker.StartAt(t, filepath.Join(dir, "1000", "podman.sock"))
	rootful := fakedocker.StartAt(t, filepath.Join(dir, "podman.sock"))
	c := webContainer()
	rootless.Add(c)
	c2 := webContainer()
	c2.ID, c2.Pid, c2.Labels = otherID, 4101, map[string]string{"runtime": "podman"}
	rootful.Add(c2)
	a := newTest(t, docker, map[int]string{
		workload: "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + ctrID + ".scope/container\n",
		ctrInit:  "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + ctrID + ".scope/container\n",
		4243:     "0::/machine.slice/libpod-" + otherID + ".scope/container\n",
		4101:     "0::/machine.slice/libpod-" + otherID + ".scope/container\n",
	}, func(cfg *Config) {
		cfg.PodmanSocketPath = "unix://" + filepath.Join(dir, "podman.sock")
		cfg.PodmanSocketTemplate = "unix://" + dir + "/%d/podman.sock"
	})
	if sels, err := a.Attest(context.Background(), workload); err != nil || !slices.Contains(values(sels), "docker:label:com.example.app:web") {
		t.Fatalf("rootless: %v, %v", values(sels), err)
	}
	if sels, err := a.Attest(context.Background(), 4243); err != nil || !slices.Contains(values(sels), "docker:label:runtime:podman") {
		t.Fatalf("rootful: %v, %v", values(sels), err)
	}
	if n := len(docker.Requests()); n != 0 {
		t.Fatalf("docker's socket got %d requests", n)
	}
}

// The edge seed's matchers (with use_new_container_locator = false).
func TestAttestWithMatchers(t *testing.T) {
	d := fakedocker.Start(t)
	d.Add(webContainer())
	c, err := ParseConfig(config.NewPlugin("WorkloadAttestor", "docker", map[string]any{
		"docker_socket_path":           d.URL(),
		"container_id_cgroup_matchers": []string{"/docker/([^/]+)", "/system.slice/docker-([^.]+).scope"},
		"use_new_container_locator":    false,
	}).Data())
	if err != nil {
		t.Fatal(err)
	}
	a := newTest(t, d, map[int]string{workload: "0::/docker/" + ctrID + "\n", ctrInit: "0::/docker/" + ctrID + "\n", 4243: "0::/x/y\n"},
		func(cfg *Config) { cfg.Matchers = c.Matchers })
	if sels, err := a.Attest(context.Background(), workload); err != nil || len(sels) != 8 {
		t.Fatalf("Attest = %v, %v", values(sels), err)
	}
	if sels, err := a.Attest(context.Background(), 4243); err != nil || sels != nil {
		t.Fatalf("no match: Attest = %v, %v", values(sels), err)
	}
	// What a matcher captures must be a container ID or name.
	m, err := cgroup.CompileMatchers([]string{"/x/(.*)"})
	if err != nil {
		t.Fatal(err)
	}
	a = newTest(t, d, map[int]string{workload: "0::/x/a/../../b\n"}, func(cfg *Config) { cfg.Matchers = m })
	if _, err := a.Attest(context.Background(), workload); err == nil || !strings.Contains(err.Error(), `"a/../../b" is not a container ID or name`) {
		t.Fatalf("error %v", err)
	}
}

func TestAttestBadInput(t *testing.T) {
	d := fakedocker.Start(t)
	a := newTest(t, d, map[int]string{workload: "garbage\n"}, nil)
	if _, err := a.Attest(context.Background(), 0); err == nil || !strings.Contains(err.Error(), "invalid pid 0") {
		t.Fatalf("pid 0: %v", err)
	}
	if _, err := a.Attest(context.Background(), 99); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing process: %v", err)
	}
	if _, err := a.Attest(context.Background(), workload); err == nil || !strings.Contains(err.Error(), "is not id:controllers:path") {
		t.Fatalf("bad cgroup file: %v", err)
	}
}

func TestValidContainerID(t *testing.T) {
	for id, ok := range map[string]bool{ctrID: true, "web_1.a-b": true, "": false, "-x": false, "a/b": false, "a b": false,
		strings.Repeat("a", 129): false, "%2e%2e": false} {
		if validContainerID(id) != ok {
			t.Errorf("validContainerID(%q) = %v", id, !ok)
		}
	}
}

// BenchmarkAttest is one attestation of a workload in a container: its
// cgroup file and the container's init's read, one GET
// /containers/{id}/json from the fake engine (in this process) over its
// unix socket on a kept-alive connection, the selectors.
func BenchmarkAttest(b *testing.B) {
	d := fakedocker.Start(b)
	d.Add(webContainer())
	cgroups := map[int]string{
		workload: "0::/system.slice/docker-" + ctrID + ".scope/system.slice/app.service\n",
		ctrInit:  scope(ctrID),
	}
	dir := b.TempDir()
	for pid, content := range cgroups {
		p := filepath.Join(dir, strconv.Itoa(pid))
		if err := os.MkdirAll(p, 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "cgroup"), []byte(content), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	a := New(Config{SocketPath: d.URL(), ProcDir: dir})
	defer a.Close()
	ctx := context.Background()
	for b.Loop() {
		if sels, err := a.Attest(ctx, workload); err != nil || len(sels) != 8 {
			b.Fatal(sels, err)
		}
	}
}
