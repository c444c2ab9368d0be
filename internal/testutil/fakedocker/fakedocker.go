// Package fakedocker is a Docker daemon for tests: a small HTTP server on
// a unix socket answering the Engine API calls the docker workload
// attestor makes, with the real wire format (GET /_ping with its
// API-Version header; GET /v<version>/containers/{id}/json with a full
// ContainerInspectResponse document, shaped as the Engine API reference's
// example for v1.47; JSON error bodies {"message": ...} with Docker's
// texts for an unknown container and an unsupported version). It can also
// stand for Podman's Docker-compatible socket.
//
// Import it only from tests.
package fakedocker

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Container is what the daemon knows of one container.
type Container struct {
	// ID is the full 64-hex-digit ID.
	ID string
	// Name without the leading "/".
	Name string
	// Pid is State.Pid, the container's init in the host PID namespace
	// (0: not running).
	Pid int
	// Image is Config.Image, as given to docker run ("nginx:1.27").
	Image string
	// ImageID is the top-level Image, the image's ID ("sha256:...").
	ImageID string
	Labels  map[string]string
	Env     []string
}

// Daemon is a running fake daemon.
type Daemon struct {
	// Socket is the unix socket's path.
	Socket string

	mu sync.Mutex
	// apiVersion is what /_ping advertises and the newest version served;
	// minAPIVersion the oldest.
	apiVersion, minAPIVersion string
	containers                map[string]Container
	requests                  []string
	hang                      chan struct{} // non-nil: requests block until closed or the client leaves
	fail                      int           // answer this many requests with 500 first
}

// Start serves a daemon on a socket in a short temporary directory until
// the test ends.
func Start(t testing.TB) *Daemon {
	t.Helper()
	return StartAt(t, filepath.Join(ShortDir(t), "docker.sock"))
}

// StartAt serves a daemon on the socket path given (its directory must
// exist) until the test ends.
func StartAt(t testing.TB, socket string) *Daemon {
	t.Helper()
	d := &Daemon{Socket: socket, apiVersion: "1.47", minAPIVersion: "1.24",
		containers: map[string]Container{}}
	ln, err := net.Listen("unix", d.Socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(d.serve), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		d.Release()
		_ = srv.Close()
		<-done
	})
	return d
}

// ShortDir is a temporary directory with a short path (unix socket paths
// are limited to about 100 bytes).
func ShortDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fakedocker")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// URL is the socket as docker_socket_path spells it.
func (d *Daemon) URL() string { return "unix://" + d.Socket }

// SetAPIVersions sets the newest API version the daemon serves (what
// /_ping advertises; default "1.47") and the oldest (default "1.24"), as
// after an upgrade.
func (d *Daemon) SetAPIVersions(newest, oldest string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.apiVersion, d.minAPIVersion = newest, oldest
}

// Add makes a container known (replacing one with its ID).
func (d *Daemon) Add(c Container) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.containers[c.ID] = c
}

// Remove forgets a container.
func (d *Daemon) Remove(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.containers, id)
}

// Hang makes every request block (as a stuck daemon's: the connection is
// accepted, no answer comes) until Release or the client gives up.
func (d *Daemon) Hang() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.hang == nil {
		d.hang = make(chan struct{})
	}
}

// Release ends Hang.
func (d *Daemon) Release() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.hang != nil {
		close(d.hang)
		d.hang = nil
	}
}

// FailNext answers the next n requests with 500 (a daemon restarting).
func (d *Daemon) FailNext(n int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.fail = n
}

// Requests returns the paths requested so far ("GET /_ping").
func (d *Daemon) Requests() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.requests...)
}

func (d *Daemon) serve(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	d.requests = append(d.requests, r.Method+" "+r.URL.Path)
	hang := d.hang
	newest, oldest := d.apiVersion, d.minAPIVersion
	fail := d.fail > 0
	if fail {
		d.fail--
	}
	d.mu.Unlock()
	if hang != nil {
		select {
		case <-hang:
		case <-r.Context().Done():
			return
		}
	}
	w.Header().Set("Api-Version", newest)
	w.Header().Set("Docker-Experimental", "false")
	w.Header().Set("Ostype", "linux")
	w.Header().Set("Server", "Docker/27.3.1 (linux)")
	if fail {
		writeError(w, http.StatusInternalServerError, "Cannot connect to the Docker daemon. Is the docker daemon running?")
		return
	}
	path := r.URL.Path
	if path == "/_ping" {
		w.Header().Set("Cache-Control", "no-cache, no-store, must-revalidate")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("OK"))
		return
	}
	if rest, ok := strings.CutPrefix(path, "/v"); ok {
		v, tail, _ := strings.Cut(rest, "/")
		switch {
		case less(newest, v):
			writeError(w, http.StatusBadRequest, fmt.Sprintf("client version %s is too new. Maximum supported API version is %s", v, newest))
			return
		case less(v, oldest):
			writeError(w, http.StatusBadRequest, fmt.Sprintf("client version %s is too old. Minimum supported API version is %s, please upgrade your client to a newer version", v, oldest))
			return
		}
		path = "/" + tail
	}
	id, ok := strings.CutPrefix(path, "/containers/")
	id, ok2 := strings.CutSuffix(id, "/json")
	if !ok || !ok2 || r.Method != http.MethodGet {
		writeError(w, http.StatusNotFound, "page not found")
		return
	}
	d.mu.Lock()
	c, found := d.containers[id]
	d.mu.Unlock()
	if !found {
		writeError(w, http.StatusNotFound, "No such container: "+id)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(inspectDocument(c))
}

func writeError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"message": msg})
}

// less compares "1.41"-style versions; a malformed one is less than all.
func less(a, b string) bool {
	num := func(v string) (int, int) {
		x, y, _ := strings.Cut(v, ".")
		i, err1 := strconv.Atoi(x)
		j, err2 := strconv.Atoi(y)
		if err1 != nil || err2 != nil {
			return -1, -1
		}
		return i, j
	}
	ai, aj := num(a)
	bi, bj := num(b)
	return ai < bi || ai == bi && aj < bj
}

// inspectDocument is GET /containers/{id}/json's answer, with the fields
// of the Engine API reference's example (v1.47).
func inspectDocument(c Container) map[string]any {
	running := c.Pid > 0
	status := "exited"
	if running {
		status = "running"
	}
	labels := c.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	name := c.Name
	if name == "" {
		name = "boring_" + c.ID[:8]
	}
	return map[string]any{
		"Id":      c.ID,
		"Created": "2025-02-17T17:43:39.64001363Z",
		"Path":    "/bin/sh",
		"Args":    []string{"-c", "exit 9"},
		"State": map[string]any{
			"Status": status, "Running": running, "Paused": false, "Restarting": false, "OOMKilled": false,
			"Dead": false, "Pid": c.Pid, "ExitCode": 0, "Error": "",
			"StartedAt": "2025-02-17T17:43:39.964707Z", "FinishedAt": "0001-01-01T00:00:00Z",
		},
		"Image":           c.ImageID,
		"ResolvConfPath":  "/var/lib/docker/containers/" + c.ID + "/resolv.conf",
		"HostnamePath":    "/var/lib/docker/containers/" + c.ID + "/hostname",
		"HostsPath":       "/var/lib/docker/containers/" + c.ID + "/hosts",
		"LogPath":         "/var/lib/docker/containers/" + c.ID + "/" + c.ID + "-json.log",
		"Name":            "/" + name,
		"RestartCount":    0,
		"Driver":          "overlayfs",
		"Platform":        "linux",
		"MountLabel":      "",
		"ProcessLabel":    "",
		"AppArmorProfile": "docker-default",
		"ExecIDs":         nil,
		"HostConfig": map[string]any{
			"NetworkMode": "bridge", "RestartPolicy": map[string]any{"Name": "no", "MaximumRetryCount": 0},
			"CgroupnsMode": "private", "Privileged": false, "ReadonlyRootfs": false,
		},
		"GraphDriver": map[string]any{"Name": "overlayfs", "Data": nil},
		"Mounts":      []any{},
		"Config": map[string]any{
			"Hostname": c.ID[:12], "Domainname": "", "User": "", "AttachStdin": false, "AttachStdout": true,
			"AttachStderr": true, "Tty": false, "OpenStdin": false, "StdinOnce": false,
			"Env": c.Env, "Cmd": []string{"/bin/sh"}, "Image": c.Image, "Volumes": nil, "WorkingDir": "",
			"Entrypoint": nil, "OnBuild": nil, "Labels": labels, "StopSignal": "SIGTERM",
		},
		"NetworkSettings": map[string]any{
			"Bridge": "", "SandboxID": strings.Repeat("5", 64), "SandboxKey": "/var/run/docker/netns/5bd0e8de2b7d",
			"Ports": map[string]any{}, "Networks": map[string]any{
				"bridge": map[string]any{"NetworkID": strings.Repeat("7", 64), "EndpointID": strings.Repeat("8", 64),
					"Gateway": "172.17.0.1", "IPAddress": "172.17.0.2", "IPPrefixLen": 16, "MacAddress": "02:42:ac:11:00:02"},
			},
		},
	}
}
