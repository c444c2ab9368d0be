package unix_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/attest/workload/unix"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

func values(t *testing.T, sels []selector.Selector) []string {
	t.Helper()
	var out []string
	for _, s := range sels {
		if s.Type != "unix" {
			t.Fatalf("selector type %q", s.Type)
		}
		if err := s.Validate(); err != nil {
			t.Fatal(err)
		}
		out = append(out, s.Value)
	}
	return out
}

func mustContain(t *testing.T, got []string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("missing %q in %v", w, got)
		}
	}
}

func TestAttestSelf(t *testing.T) {
	sels, err := unix.New(unix.Config{}).Attest(context.Background(), int32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	got := values(t, sels)
	uid, gid := strconv.Itoa(os.Geteuid()), strconv.Itoa(os.Getegid())
	mustContain(t, got, "uid:"+uid, "gid:"+gid)
	// Names come from /etc/passwd and /etc/group (also with CGO_ENABLED=0).
	u, err := user.LookupId(uid)
	if err != nil {
		t.Fatalf("lookup uid %s: %v", uid, err)
	}
	g, err := user.LookupGroupId(gid)
	if err != nil {
		t.Fatalf("lookup gid %s: %v", gid, err)
	}
	mustContain(t, got, "user:"+u.Username, "group:"+g.Name)
	for _, v := range got {
		if strings.HasPrefix(v, "path:") || strings.HasPrefix(v, "sha256:") {
			t.Errorf("path selector %q without discover_workload_path", v)
		}
	}
}

// TestAttestOtherUser checks uid/gid/supplementary groups of a process
// running under different credentials.
func TestAttestOtherUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to start a process as uid 65534")
	}
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{100, 4242}}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()

	sels, err := unix.New(unix.Config{}).Attest(context.Background(), int32(cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	got := values(t, sels)
	mustContain(t, got, "uid:65534", "gid:65534", "supplementary_gid:100", "supplementary_gid:4242")
	if u, err := user.LookupId("65534"); err == nil {
		mustContain(t, got, "user:"+u.Username)
	}
	if g, err := user.LookupGroupId("100"); err == nil {
		mustContain(t, got, "supplementary_group:"+g.Name)
	}
	if slices.Contains(got, "uid:0") || slices.Contains(got, "supplementary_gid:0") {
		t.Errorf("root identity leaked into %v", got)
	}
	// 4242 has no name: no supplementary_group for it, and nothing fails.
	for _, v := range got {
		if v == "supplementary_group:" {
			t.Errorf("empty group name in %v", got)
		}
	}
}

func TestWorkloadPathAndDigest(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exe, err = filepath.EvalSymlinks(exe)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	pid := int32(os.Getpid())
	size := int64(len(data))

	for _, tc := range []struct {
		name       string
		limit      int64
		wantDigest bool
	}{
		{"no limit", 0, true},
		{"limit equals size", size, true},
		{"file larger than limit", size - 1, false},
		{"hashing disabled", -1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sels, err := unix.New(unix.Config{DiscoverWorkloadPath: true, WorkloadSizeLimit: tc.limit}).Attest(context.Background(), pid)
			if err != nil {
				t.Fatal(err)
			}
			got := values(t, sels)
			mustContain(t, got, "path:"+exe, "uid:"+strconv.Itoa(os.Geteuid()))
			if slices.Contains(got, digest) != tc.wantDigest {
				t.Fatalf("digest present=%v, want %v: %v", !tc.wantDigest, tc.wantDigest, got)
			}
		})
	}
}

func TestAttestMissingProcess(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skip(err)
	}
	if _, err := unix.New(unix.Config{}).Attest(context.Background(), int32(cmd.Process.Pid)); err == nil {
		t.Fatal("attested an exited process")
	}
	if _, err := unix.New(unix.Config{}).Attest(context.Background(), 0); err == nil {
		t.Fatal("attested pid 0")
	}
}
