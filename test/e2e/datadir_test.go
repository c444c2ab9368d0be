package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// TestSecondAgentOnSameSocket: an agent with its own data_dir but the
// Workload API socket of a running agent refuses to start; the running
// agent keeps its socket (the same file, also after the second exited)
// and keeps serving its workloads.
func TestSecondAgentOnSameSocket(t *testing.T) {
	s := newStack(t)
	id := s.register(t, "/first", uidSelector)
	testutil.RequireSVID(t, s.agent.SocketAddr(), id, deadline)
	socket := s.agent.Config.SocketPath
	before, err := os.Lstat(socket)
	if err != nil {
		t.Fatal(err)
	}

	cfg := testutil.AgentFor(t, s.srv, "/agent/edge-2", "")
	cfg.SocketPath = socket
	second := testutil.NewAgent(t, cfg)
	logs := second.StartProcess(t).WaitExit(t, deadline)
	if want := "socket " + socket + " is in use by another process"; !strings.Contains(logs, want) {
		t.Fatalf("second agent's log lacks %q:\n%s", want, logs)
	}

	after, err := os.Lstat(socket)
	if err != nil {
		t.Fatalf("first agent's socket gone after the second agent exited: %v", err)
	}
	if !os.SameFile(before, after) {
		t.Fatal("first agent's socket was replaced")
	}
	testutil.RequireSVID(t, s.agent.SocketAddr(), id, deadline)
}

// TestSecondServerOnSameDataDir: a second sigil-server on the data_dir of
// a running one (its own socket and port) refuses to start, naming the
// first one's pid; the first keeps serving.
func TestSecondServerOnSameDataDir(t *testing.T) {
	first := testutil.StartServer(t, testutil.ServerConfig{})
	second := testutil.NewServer(t, testutil.ServerConfig{
		DataDir:    first.Config.DataDir,
		SocketPath: filepath.Join(testutil.ShortTempDir(t), "api.sock"),
	})
	logs := second.StartProcess(t).WaitExit(t, deadline)
	if want := fmt.Sprintf("data_dir %s is in use by pid %d", first.Config.DataDir, first.Proc.Pid()); !strings.Contains(logs, want) {
		t.Fatalf("second server's log lacks %q:\n%s", want, logs)
	}
	first.Admin(t).ListEntries(t)
}

// TestSecondAgentOnSameDataDir: a second sigil-agent on the data_dir of a
// running one (its own socket) refuses to start, naming the first one's
// pid; the first keeps serving. After the first is killed (SIGKILL), the
// data_dir is free again: no stale lock.
func TestSecondAgentOnSameDataDir(t *testing.T) {
	s := newStack(t)
	id := s.register(t, "/first", uidSelector)
	testutil.RequireSVID(t, s.agent.SocketAddr(), id, deadline)

	cfg := s.agent.Config
	cfg.SocketPath = filepath.Join(testutil.ShortTempDir(t), "api.sock")
	cfg.JoinToken = ""
	second := testutil.NewAgent(t, cfg)
	logs := second.StartProcess(t).WaitExit(t, deadline)
	if want := fmt.Sprintf("data_dir %s is in use by pid %d", cfg.DataDir, s.agent.Proc.Pid()); !strings.Contains(logs, want) {
		t.Fatalf("second agent's log lacks %q:\n%s", want, logs)
	}
	testutil.RequireSVID(t, s.agent.SocketAddr(), id, deadline)

	s.agent.Proc.Kill()
	second.Start(t)
	testutil.RequireSVID(t, second.SocketAddr(), id, deadline)
}
