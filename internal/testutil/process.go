package testutil

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Command describes a process to start.
type Command struct {
	// Name labels the process in test logs and names its log file.
	Name string
	Path string
	Args []string
	// Env is added to the test's environment.
	Env []string
	// Dir is the working directory ("": the test's).
	Dir string
	// Wrap prefixes the command line, e.g. {"ip", "netns", "exec", ns}.
	Wrap []string
	// LogPath receives stdout and stderr (appended, so a restarted process
	// keeps one file); "" is <t.TempDir()>/<Name>.log.
	LogPath string
}

// Process is a started Command. It is killed on t.Cleanup if still
// running, and its log is printed there when the test failed.
type Process struct {
	Name    string
	LogPath string

	cmd      *exec.Cmd
	logStart int64
	done     chan struct{}
	err      error // valid after done
}

// StopTimeout bounds how long Stop waits after SIGTERM before SIGKILL.
const StopTimeout = 10 * time.Second

// Start starts c, failing the test if it cannot.
func Start(t testing.TB, c Command) *Process {
	t.Helper()
	if c.Name == "" {
		c.Name = filepath.Base(c.Path)
	}
	if c.LogPath == "" {
		c.LogPath = filepath.Join(t.TempDir(), c.Name+".log")
	}
	f, err := os.OpenFile(c.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatalf("%s: open log: %v", c.Name, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatalf("%s: stat log: %v", c.Name, err)
	}
	argv := append(append([]string{}, c.Wrap...), c.Path)
	argv = append(argv, c.Args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.Dir = c.Dir
	cmd.Stdout, cmd.Stderr = f, f
	// Die with the test binary even if it is killed before Cleanup runs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: start %v: %v", c.Name, argv, err)
	}
	p := &Process{Name: c.Name, LogPath: c.LogPath, cmd: cmd, logStart: st.Size(), done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("---- %s log (%s) ----\n%s", p.Name, p.LogPath, tail(p.Logs(), 300))
		}
	})
	return p
}

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is the process's exit error once it has exited (nil on status 0).
func (p *Process) Err() error {
	<-p.done
	return p.err
}

// Stop sends SIGTERM, waits up to StopTimeout, then kills. It returns the
// exit error of a process that did not stop cleanly.
func (p *Process) Stop() error {
	if p.Exited() {
		return p.err
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(StopTimeout):
		// A Go process dumps its goroutines on SIGQUIT (into its log):
		// what it was stuck on.
		_ = p.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-p.done:
		case <-time.After(2 * time.Second):
		}
		p.Kill()
		return fmt.Errorf("%s did not stop within %v after SIGTERM; killed after SIGQUIT (goroutine dump in %s)", p.Name, StopTimeout, p.LogPath)
	}
}

// Kill sends SIGKILL and waits for the process to exit.
func (p *Process) Kill() {
	if !p.Exited() {
		_ = p.cmd.Process.Kill()
	}
	<-p.done
}

// WaitExit waits until the process exits by itself and returns its log;
// it fails the test (killing the process) if it is still running after
// timeout.
func (p *Process) WaitExit(t testing.TB, timeout time.Duration) string {
	t.Helper()
	select {
	case <-p.done:
		return p.Logs()
	case <-time.After(timeout):
		p.Kill()
		t.Fatalf("%s still running after %v; expected it to exit. Log:\n%s", p.Name, timeout, tail(p.Logs(), 50))
		return ""
	}
}

// Logs returns what this process has written so far (not earlier runs
// that share the log file).
func (p *Process) Logs() string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil || int64(len(b)) < p.logStart {
		return ""
	}
	return string(b[p.logStart:])
}

// WaitForLog waits until the process's log contains substr and returns
// the log. It fails the test on timeout or if the process exits first.
func (p *Process) WaitForLog(t testing.TB, substr string, timeout time.Duration) string {
	t.Helper()
	err := Poll(timeout, 20*time.Millisecond, func() (bool, error) {
		if l := p.Logs(); strings.Contains(l, substr) {
			return true, nil
		}
		if p.Exited() {
			return false, fmt.Errorf("%s exited (%v)", p.Name, p.err)
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("waiting for %q in %s log: %v", substr, p.Name, err)
	}
	return p.Logs()
}

// Poll calls cond every interval until it returns true or an error, or
// until timeout passes.
func Poll(timeout, interval time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("timed out after " + timeout.String())
		}
		time.Sleep(interval)
	}
}

func tail(s string, n int) string {
	lines := bytes.Split([]byte(s), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
