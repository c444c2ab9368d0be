package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The IDs of testdata (see testdata/README.md for where each shape comes
// from).
const (
	idA  = "7970af05857ce6a04845fe9b9075e704122318bd3245b5bc1a00301160aea400"
	idB  = "51a26816221d284f3eeca29d1cc373d81a22813df09aa83a3cb031320a3f67ff"
	idC  = "d919534105f4a85e3046d7328191bd276fd1068e107058e46575a2bbbacb079f"
	idD  = "239f573ba16187a22326cc9758c54b90adb1e91ef3941fe9efde7c9a58da6eda"
	idE  = "95b0d29768eb0465839591e92fecbe0609fed234dc32cd8a82d29a7820052554"
	pod1 = "28a98c5c-748b-46b4-966b-155b4067c70c"
	pod2 = "c221d8a1-93b0-402c-9605-a5c2699a45e9"
	pid  = 4242
)

type want struct {
	id, pod   string
	scopes    []string
	mountinfo bool
	err       string
}

func TestLocateFixtures(t *testing.T) {
	p1u, p2u := strings.ReplaceAll(pod1, "-", "_"), strings.ReplaceAll(pod2, "-", "_")
	k8sV2 := "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + p1u + ".slice/cri-containerd-" + idB + ".scope"
	crio := "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + p2u + ".slice/crio-" + idC + ".scope"
	sidecar := "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + p1u + ".slice/cri-containerd-" + idB + ".scope"
	none := want{}
	for _, tc := range []struct {
		dir       string
		docker    want // Locator{} (the docker attestor)
		k8s       want // Locator{PodUID: true}
		sameAsK8s bool // k8s is docker plus no pod
	}{
		{dir: "docker-v1-cgroupfs", docker: want{id: idA, scopes: []string{"/docker/" + idA}}, sameAsK8s: true},
		{dir: "docker-v1-systemd", docker: want{id: idA, scopes: []string{"/system.slice/docker-" + idA + ".scope"}}, sameAsK8s: true},
		{dir: "docker-v2-systemd", docker: want{id: idA, scopes: []string{"/system.slice/docker-" + idA + ".scope"}}, sameAsK8s: true},
		{dir: "docker-v2-cgroupfs", docker: want{id: idA, scopes: []string{"/docker/" + idA}}, sameAsK8s: true},
		// A sub-cgroup of the container's scope: the scope is the container's.
		{dir: "docker-v2-systemd-subcgroup", docker: want{id: idA, scopes: []string{"/system.slice/docker-" + idA + ".scope"}}, sameAsK8s: true},
		{dir: "docker-v2-from-other-cgroupns", docker: want{id: idA, scopes: []string{"/../docker-" + idA + ".scope"}}, sameAsK8s: true},
		{dir: "k8s-v1-cgroupfs-containerd",
			docker: want{id: idB, scopes: []string{"/kubepods/besteffort/pod" + pod1 + "/" + idB}},
			k8s:    want{id: idB, pod: pod1, scopes: []string{"/kubepods/besteffort/pod" + pod1 + "/" + idB}}},
		{dir: "k8s-v2-cgroupfs-containerd",
			docker: want{id: idB, scopes: []string{"/kubepods/burstable/pod" + pod1 + "/" + idB}},
			k8s:    want{id: idB, pod: pod1, scopes: []string{"/kubepods/burstable/pod" + pod1 + "/" + idB}}},
		{dir: "k8s-v2-systemd-containerd", docker: want{id: idB, scopes: []string{k8sV2}}, k8s: want{id: idB, pod: pod1, scopes: []string{k8sV2}}},
		{dir: "k8s-v2-systemd-crio", docker: want{id: idC, scopes: []string{crio}}, k8s: want{id: idC, pod: pod2, scopes: []string{crio}}},
		{dir: "k8s-v2-systemd-crio-conmon",
			docker: want{id: idC, scopes: []string{strings.Replace(crio, "crio-", "crio-conmon-", 1)}},
			k8s:    want{id: idC, pod: pod2, scopes: []string{strings.Replace(crio, "crio-", "crio-conmon-", 1)}}},
		// The unified line (crio.service) names nothing and is ignored.
		{dir: "k8s-v1-systemd-crio", docker: want{id: idC, scopes: []string{crio}}, k8s: want{id: idC, pod: pod2, scopes: []string{crio}}},
		// kind: for docker the lines disagree; for k8s the pod's lines win.
		{dir: "kind-node-v1",
			docker: want{err: "cgroups name containers " + idB + " and " + idD},
			k8s:    want{id: idB, pod: pod1, scopes: []string{"/docker/" + idD + "/kubepods/besteffort/pod" + pod1 + "/" + idB}}},
		{dir: "podman-rootful-v2", docker: want{id: idE, scopes: []string{"/machine.slice/libpod-" + idE + ".scope"}}, sameAsK8s: true},
		{dir: "podman-rootless-v2", docker: want{id: idE, scopes: []string{"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + idE + ".scope"}}, sameAsK8s: true},
		{dir: "host-v1-session", docker: none, sameAsK8s: true},
		{dir: "host-v2-service", docker: none, sameAsK8s: true},
		// Looks like a container here; Container.Same against the real
		// container's init is what refuses it (TestSameRefusesForgedScope).
		{dir: "forged-delegated-v2", docker: want{id: idA, scopes: []string{"/user.slice/user-1000.slice/user@1000.service/app.slice/" + idA}}, sameAsK8s: true},
		{dir: "conflict-v1", docker: want{err: "cgroups name containers " + idA + " and 7b5f741e"}, sameAsK8s: true},
		{dir: "conflict-pods-v1",
			docker: want{id: idB, scopes: []string{"/kubepods/besteffort/pod" + pod1 + "/" + idB, "/kubepods/besteffort/pod" + pod2 + "/" + idB}},
			k8s:    want{err: "cgroups name pods " + pod1 + " and " + pod2}},
		{dir: "sidecar-mountinfo",
			docker: want{id: idB, mountinfo: true, scopes: []string{"/../.." + sidecar}},
			k8s:    want{id: idB, pod: pod1, mountinfo: true, scopes: []string{"/../.." + sidecar}}},
		{dir: "same-cgroup-no-id", docker: none, sameAsK8s: true},
		// A host process's mountinfo is never read: it could be forged.
		{dir: "host-forged-mountinfo", docker: none, sameAsK8s: true},
		{dir: "malformed", docker: want{err: `cgroup line 2: "garbage" is not id:controllers:path`}, sameAsK8s: true},
		{dir: "malformed-mountinfo", docker: want{err: `mountinfo line 1: "1441 1432 0:31 / /sys/fs/cgroup ro cgroup2 cgroup rw" has no "-" separator`}, sameAsK8s: true},
	} {
		for _, mode := range []struct {
			name string
			l    Locator
			w    want
		}{
			{"docker", Locator{ProcDir: filepath.Join("testdata", tc.dir)}, tc.docker},
			{"k8s", Locator{ProcDir: filepath.Join("testdata", tc.dir), PodUID: true}, map[bool]want{true: tc.docker, false: tc.k8s}[tc.sameAsK8s]},
		} {
			t.Run(tc.dir+"/"+mode.name, func(t *testing.T) {
				got, err := mode.l.Locate(pid)
				if mode.w.err != "" {
					if err == nil || !strings.Contains(err.Error(), mode.w.err) {
						t.Fatalf("Locate = %+v, %v; want error containing %q", got, err, mode.w.err)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if got.ID != mode.w.id || got.PodUID != mode.w.pod || !slices.Equal(got.Scopes, mode.w.scopes) || got.FromMountInfo != mode.w.mountinfo {
					t.Fatalf("Locate = %+v\nwant %+v", got, mode.w)
				}
			})
		}
	}
}

func TestLocateConflictIsErrConflict(t *testing.T) {
	_, err := (&Locator{ProcDir: "testdata/conflict-v1"}).Locate(pid)
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("error %v is not ErrConflict", err)
	}
}

func TestLocateMissingProcess(t *testing.T) {
	_, err := (&Locator{ProcDir: "testdata/docker-v2-systemd"}).Locate(4243)
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("error %v, want one satisfying os.ErrNotExist", err)
	}
	if _, err := (&Locator{}).Locate(0); err == nil || !strings.Contains(err.Error(), "invalid pid 0") {
		t.Fatalf("pid 0: error %v", err)
	}
}

// TestLocateSelf: the test's own process, through the real /proc, is
// located without error (in a container or not).
func TestLocateSelf(t *testing.T) {
	if _, err := os.Stat("/proc/self/cgroup"); err != nil {
		t.Skip("no /proc/self/cgroup:", err)
	}
	c, err := (&Locator{PodUID: true}).Locate(int32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("this process: %+v", c)
}

// TestSameRefusesForgedScope: a cgroup named after a container in a
// user's delegated subtree locates to the container's ID, but not to the
// container's scope.
func TestSameRefusesForgedScope(t *testing.T) {
	forged, err := (&Locator{ProcDir: "testdata/forged-delegated-v2"}).Locate(pid)
	if err != nil {
		t.Fatal(err)
	}
	real, err := (&Locator{ProcDir: "testdata/docker-v2-systemd"}).Locate(pid)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := (&Locator{ProcDir: "testdata/docker-v2-systemd-subcgroup"}).Locate(pid)
	if err != nil {
		t.Fatal(err)
	}
	if forged.ID != real.ID {
		t.Fatalf("fixtures: IDs %s and %s differ", forged.ID, real.ID)
	}
	if forged.Same(real) {
		t.Fatal("a forged cgroup is the Same as the container")
	}
	if !sub.Same(real) {
		t.Fatal("a sub-cgroup of the container's scope is not the Same container")
	}
}

func TestParse(t *testing.T) {
	got, err := Parse([]byte("1:name=systemd:/a:b\n\n0::/\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{{"1", "name=systemd", "/a:b"}, {"0", "", "/"}}
	if !slices.Equal(got, want) {
		t.Fatalf("Parse = %+v, want %+v", got, want)
	}
	for in, msg := range map[string]string{
		"":                       "no entries",
		"0:/x\n":                 "is not id:controllers:path",
		"x::/a\n":                `hierarchy id "x" is not a number`,
		"0::relative\n":          `path "relative" is not absolute`,
		"0::\n":                  `path "" is not absolute`,
		"0::/\n" + "-1::/b\n":    `line 2: hierarchy id "-1"`,
		strings.Repeat("a", 300): "is not id:controllers:path",
	} {
		if _, err := Parse([]byte(in)); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("Parse(%.40q): error %v, want one containing %q", in, err, msg)
		}
	}
}

func TestReadRefusesHugeFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "7"), 0o755); err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("0::/"+strings.Repeat("a", 1000)+"\n", 70)
	if err := os.WriteFile(filepath.Join(dir, "7", "cgroup"), []byte(big), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(dir, 7); err == nil || !strings.Contains(err.Error(), "larger than 65536 bytes") {
		t.Fatalf("error %v", err)
	}
}

func TestExtract(t *testing.T) {
	for _, tc := range []struct{ path, pod, id string }{
		{"/docker/" + idA, "", idA},
		// The last segment holding an ID wins.
		{"/docker/" + idD + "/kubepods/pod" + pod1 + "/" + idB, pod1, idB},
		// The pod UID may share the ID's segment (some CRI-O v1 layouts).
		{"/kubepods/pod" + pod1 + ":crio:" + idB, pod1, idB},
		// A 65-digit or 63-digit run is not an ID; uppercase hex is.
		{"/docker/" + idA + "0", "", ""},
		{"/docker/" + idA[1:], "", ""},
		{"/docker/" + strings.ToUpper(idA), "", strings.ToUpper(idA)},
		// Part of a longer word is not an ID.
		{"/x" + idA, "", ""},
		// No pod before the ID: no pod UID.
		{"/" + "pod" + pod1 + "x/" + idB, "", idB},
		{"", "", ""},
		{"/", "", ""},
	} {
		pod, id := Extract(tc.path, true)
		if pod != tc.pod || id != tc.id {
			t.Errorf("Extract(%q) = %q, %q; want %q, %q", tc.path, pod, id, tc.pod, tc.id)
		}
	}
}

func TestMatchers(t *testing.T) {
	// The edge seed's matchers (regular expressions) and SPIRE's grammar.
	m, err := CompileMatchers([]string{"/docker/([^/]+)", "/system.slice/docker-([^.]+).scope", "/my.slice/*/<id>/*"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, id, scope string }{
		{"/docker/" + idA, idA, "/docker/" + idA},
		{"/system.slice/docker-" + idA + ".scope", idA, "/system.slice/docker-" + idA + ".scope"},
		{"/my.slice/x/abc/y", "abc", "/my.slice/x/abc"},
		{"/docker/" + idA + "/sub", "", ""}, // whole path only
		{"/my.slice/x/abc", "", ""},
	} {
		id, scope, ok := m.Match(tc.path)
		if id != tc.id || scope != tc.scope || ok != (tc.id != "") {
			t.Errorf("Match(%q) = %q, %q, %v; want %q, %q", tc.path, id, scope, ok, tc.id, tc.scope)
		}
	}
	for _, tc := range []struct {
		patterns []string
		err      string
	}{
		{nil, "at least one pattern"},
		{[]string{"/docker/<id>/<id>"}, `must contain the segment <id> exactly once`},
		{[]string{"/a/b/<id>", "/*/b/<id>"}, `patterns "/a/b/<id>" and "/*/b/<id>" are ambiguous`},
		{[]string{"/docker/*"}, "exactly one capture group"},
		{[]string{"/docker/(a)(b)"}, "this one has 2 groups"},
		{[]string{"/docker/([^/]+"}, "is not a regular expression"},
	} {
		if _, err := CompileMatchers(tc.patterns); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("CompileMatchers(%q): error %v, want one containing %q", tc.patterns, err, tc.err)
		}
	}
	// Different lengths are not ambiguous (SPIRE's rule).
	if _, err := CompileMatchers([]string{"/a/<id>", "/a/*/<id>"}); err != nil {
		t.Fatal(err)
	}
}

func TestLocateWithMatchers(t *testing.T) {
	m, err := CompileMatchers([]string{"/docker/<id>", "/x/(.*)"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := (&Locator{ProcDir: "testdata/docker-v1-cgroupfs", Matchers: m}).Locate(pid)
	if err != nil || c.ID != idA || !slices.Equal(c.Scopes, []string{"/docker/" + idA}) {
		t.Fatalf("Locate = %+v, %v", c, err)
	}
	// Matchers are the only way: the systemd driver's scope matches none.
	c, err = (&Locator{ProcDir: "testdata/docker-v2-systemd", Matchers: m}).Locate(pid)
	if err != nil || c.ID != "" {
		t.Fatalf("Locate = %+v, %v; want no container", c, err)
	}
	if _, err := (&Locator{ProcDir: "testdata/conflict-v1", Matchers: m}).Locate(pid); !errors.Is(err, ErrConflict) {
		t.Fatalf("conflict: error %v", err)
	}
	if _, err := m.locate([]Entry{{"0", "", "/x/"}}); err == nil || !strings.Contains(err.Error(), "captured an empty container ID") {
		t.Fatalf("empty capture: error %v", err)
	}
}

func TestParseMountInfoLine(t *testing.T) {
	root, typ, err := parseMountInfoLine(`36 35 98:0 /with\040space\134x /mnt rw,noatime master:1 shared:2 - cgroup2  rw`)
	if err != nil || root != `/with space\x` || typ != "cgroup2" {
		t.Fatalf("= %q, %q, %v", root, typ, err)
	}
	for line, msg := range map[string]string{
		"1 2 3 / /x rw - ":     "has no file system type",
		"1 2 / /x - cgroup2 a": "fewer than 6 fields",
	} {
		if _, _, err := parseMountInfoLine(line); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: error %v, want %q", line, err, msg)
		}
	}
}

// FuzzLocateEntries: any cgroup file parses or fails cleanly, and what
// Locate finds is a 64-hex-digit ID inside each of its scopes.
func FuzzLocateEntries(f *testing.F) {
	for _, dir := range []string{"docker-v1-cgroupfs", "k8s-v2-systemd-crio", "kind-node-v1", "host-v1-session"} {
		data, err := os.ReadFile(filepath.Join("testdata", dir, "4242", "cgroup"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := Parse(data)
		if err != nil {
			return
		}
		// A proc root without files: mountinfo, when read, is missing.
		c, err := (&Locator{ProcDir: "testdata/no-such-dir", PodUID: true}).LocateEntries(1, entries)
		if err != nil || c.ID == "" {
			return
		}
		if len(c.ID) != 64 || len(c.Scopes) == 0 {
			t.Fatalf("Locate = %+v", c)
		}
		for _, s := range c.Scopes {
			if !strings.Contains(s, c.ID) {
				t.Fatalf("scope %q does not hold ID %q", s, c.ID)
			}
		}
	})
}
