package e2e

import (
	"os"
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
