package datadir

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestAcquireExclusive(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	l, err := Acquire(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("data_dir %v, %v; want 0700", fi, err)
	}
	b, err := os.ReadFile(filepath.Join(dir, LockFile))
	if err != nil || string(b) != fmt.Sprintf("%d\n", os.Getpid()) {
		t.Fatalf("lock file holds %q, %v; want our pid", b, err)
	}

	_, err = Acquire(dir)
	var inUse *InUseError
	if !errors.As(err, &inUse) || !errors.Is(err, ErrInUse) || inUse.PID != os.Getpid() {
		t.Fatalf("second Acquire: %v, want in use by pid %d", err, os.Getpid())
	}
	if want := fmt.Sprintf("data_dir %s is in use by pid %d", dir, os.Getpid()); err.Error() != want {
		t.Fatalf("error %q, want %q", err, want)
	}

	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	l2, err := Acquire(dir)
	if err != nil {
		t.Fatalf("Acquire after Release: %v", err)
	}
	l2.Release()
}

// holdEnv makes the test binary, re-executed, hold the lock of the
// directory it names until killed.
const holdEnv = "SIGIL_DATADIR_TEST_HOLD"

func TestMain(m *testing.M) {
	if dir := os.Getenv(holdEnv); dir != "" {
		if _, err := Acquire(dir); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("locked")
		select {}
	}
	os.Exit(m.Run())
}

// A lock held by another process names its pid, and is free again once
// that process was killed with SIGKILL (no stale lock).
func TestAcquireOtherProcessKilled(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holdEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "locked\n" {
		t.Fatalf("helper: %q, %v", line, err)
	}

	_, err = Acquire(dir)
	var inUse *InUseError
	if !errors.As(err, &inUse) || inUse.PID != cmd.Process.Pid {
		t.Fatalf("Acquire while another process holds it: %v, want in use by pid %d", err, cmd.Process.Pid)
	}

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	l, err := Acquire(dir)
	if err != nil {
		t.Fatalf("Acquire after the holder was killed: %v", err)
	}
	l.Release()
}

func TestRemoveLeftovers(t *testing.T) {
	dir := t.TempDir()
	keysDir := filepath.Join(dir, "keys")
	if err := os.Mkdir(keysDir, 0o700); err != nil {
		t.Fatal(err)
	}
	planted := []string{filepath.Join(dir, ".workload-cache.json.tmp-1"), filepath.Join(keysDir, ".k.pem.tmp-2")}
	for _, p := range append(planted, filepath.Join(dir, "workload-cache.json")) {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	l, err := Acquire(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	// The same directory twice, a missing one and "" (no key directory).
	if err := l.RemoveLeftovers(log, dir, keysDir, dir+"/", filepath.Join(dir, "missing"), ""); err != nil {
		t.Fatal(err)
	}
	for _, p := range planted {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s not removed: %v", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "workload-cache.json")); err != nil {
		t.Errorf("the state file itself was removed: %v", err)
	}
	if got := strings.Count(logs.String(), "Removed temporary files"); got != 2 {
		t.Errorf("%d log lines, want one per directory with leftovers:\n%s", got, logs.String())
	}
}
