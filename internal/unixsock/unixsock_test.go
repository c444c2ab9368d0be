package unixsock

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/testutil"
)

func mustListen(t *testing.T, path string) *Listener {
	t.Helper()
	l, err := Listen(path, 0o600, 0o700)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func TestListenModeAndRemoveOnClose(t *testing.T) {
	path := filepath.Join(testutil.ShortTempDir(t), "sub", "api.sock")
	l, err := Listen(path, 0o640, 0o750)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o640 {
		t.Fatalf("socket %v, %v; want a 0640 socket", fi.Mode(), err)
	}
	di, err := os.Stat(filepath.Dir(path))
	if err != nil || di.Mode().Perm() != 0o750 {
		t.Fatalf("socket dir %v, %v; want 0750", di.Mode().Perm(), err)
	}
	if !Live(path) {
		t.Fatal("socket does not accept connections")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket not removed on Close: %v", err)
	}
	// Only temporary names are gone too.
	if des, _ := os.ReadDir(filepath.Dir(path)); len(des) != 0 {
		t.Fatalf("left in the socket dir: %v", des)
	}
	if err := l.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close: %v, want net.ErrClosed", err)
	}
}

// A socket another listener serves on is refused, and the refusal leaves
// it serving.
func TestListenRefusesLiveSocket(t *testing.T) {
	path := filepath.Join(testutil.ShortTempDir(t), "api.sock")
	first := mustListen(t, path)
	_, err := Listen(path, 0o600, 0o700)
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), path) {
		t.Fatalf("second Listen: %v, want ErrInUse naming %s", err, path)
	}
	go func() {
		if c, err := first.Accept(); err == nil {
			c.Close()
		}
	}()
	if !Live(path) {
		t.Fatal("first listener's socket no longer answers")
	}
}

// A socket nobody answers on (left by a crash) is replaced.
func TestListenReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(testutil.ShortTempDir(t), "api.sock")
	dead, err := net.ListenUnix("unix", &net.UnixAddr{Net: "unix", Name: path})
	if err != nil {
		t.Fatal(err)
	}
	dead.SetUnlinkOnClose(false)
	dead.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket not in place: %v", err)
	}
	mustListen(t, path)
	if !Live(path) {
		t.Fatal("replacement does not answer")
	}
}

func TestListenLeavesNonSocket(t *testing.T) {
	path := filepath.Join(testutil.ShortTempDir(t), "api.sock")
	if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(path, 0o600, 0o700); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "precious" {
		t.Fatal("regular file modified")
	}
}

// Close never removes a successor's socket: once the first listener's file
// was replaced (here: unlinked, then bound by a second listener), closing
// the first leaves the second's in place.
func TestCloseLeavesSuccessorsSocket(t *testing.T) {
	path := filepath.Join(testutil.ShortTempDir(t), "api.sock")
	first, err := Listen(path, 0o600, 0o700)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	second := mustListen(t, path)
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("successor's socket removed: %v", err)
	}
	go func() {
		if c, err := second.Accept(); err == nil {
			c.Close()
		}
	}()
	if !Live(path) {
		t.Fatal("successor's socket does not answer")
	}
}

// Paths too long for a temporary name beside them are bound in place.
func TestListenLongPath(t *testing.T) {
	dir := testutil.ShortTempDir(t)
	sub := filepath.Join(dir, strings.Repeat("d", maxPathLen-len(dir)-4))
	path := filepath.Join(sub, "a")
	if len(path) > maxPathLen || len(filepath.Join(sub, ".s01234567")) <= maxPathLen {
		t.Fatalf("bad test path length %d", len(path))
	}
	l, err := Listen(path, 0o600, 0o700)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v, %v", fi, err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket not removed: %v", err)
	}
}
