package workloadapi_test

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// gateAttestor reports each PID it attests and holds the attestation until
// released.
type gateAttestor struct {
	pids    chan int32
	release chan struct{}
}

func (g *gateAttestor) Attest(ctx context.Context, pid int32) ([]selector.Selector, error) {
	g.pids <- pid
	<-g.release
	return []selector.Selector{uidSelector()}, nil
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestCallerReplacedDuringAttestation: a caller whose process is gone by the
// time attestation finishes is not served, even though its selectors match.
func TestCallerReplacedDuringAttestation(t *testing.T) {
	gate := &gateAttestor{pids: make(chan int32, 1), release: make(chan struct{})}
	logs := &syncBuffer{}
	e := startEnv(t, envOpts{attestor: gate, log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	now := e.clk.Now()
	id := mustID(t, "/guarded")
	e.addIdentity(t, []*cache.Entry{entry("g", id, now, uidSelector())},
		map[string]*cache.X509SVID{"g": e.ca.svid(t, id, now.Add(-time.Minute), now.Add(time.Hour))})

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+e.addr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pid int32
	select {
	case pid = <-gate.pids:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal("helper never called the API")
	}
	if pid != int32(cmd.Process.Pid) {
		t.Fatalf("attesting pid %d, helper is %d", pid, cmd.Process.Pid)
	}
	cmd.Process.Kill()
	cmd.Wait()
	close(gate.release)
	waitFor(t, func() bool { return strings.Contains(logs.String(), "Caller changed during attestation") })
	if strings.Contains(logs.String(), "Attested caller") {
		t.Fatal("a vanished caller was treated as attested")
	}
}
