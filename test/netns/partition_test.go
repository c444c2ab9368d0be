// Package netns cuts a real agent off from its real server with network
// namespaces, a veth pair and nftables, and checks that workloads are not
// affected and that the agent recovers on its own. It needs root (skips
// otherwise) and the ip and nft tools.
package netns

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.Main(m)) }

// reconnectDeadline bounds recovery after a heal. Generous on purpose:
// the agent backs off while cut off, and this is not a timing assertion.
const reconnectDeadline = 45 * time.Second

// partitionFor is how long each cut lasts: long enough for the agent to
// notice (its RPCs and reconnect attempts fail or hang) and for entries
// created meanwhile to be pending.
const partitionFor = 2 * time.Second

var uidSelector = "unix:uid:" + strconv.Itoa(os.Getuid())

// Env is a server in one namespace and an agent in another, with this
// test process as the agent's workload.
type Env struct {
	P       *testutil.Partition
	Srv     *testutil.Server
	Agent   *testutil.Agent
	AgentID spiffeid.ID // the parent for workload entries
}

// NewEnv starts the server in P.ServerNS and an attested agent in
// P.AgentNS.
func NewEnv(t testing.TB) *Env {
	t.Helper()
	p := testutil.NewPartition(t)
	srv := testutil.StartServer(t, testutil.ServerConfig{BindAddress: p.ServerIP, BindPort: 8081}, p.Wrap(p.ServerNS)...)
	cfg := testutil.AgentFor(t, srv, "/device/edge-1", "")
	a := testutil.StartAgent(t, cfg, p.Wrap(p.AgentNS)...)
	return &Env{P: p, Srv: srv, Agent: a, AgentID: srv.ID("/device/edge-1")}
}

// prober fetches the workload's SVID on a fresh Workload API connection
// in a loop and counts failures, until stopped.
type prober struct {
	addr     string
	want     spiffeid.ID
	ok, bad  atomic.Int64
	lastErr  atomic.Value
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

func startProber(t *testing.T, addr string, want spiffeid.ID) *prober {
	pr := &prober{addr: addr, want: want, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(pr.done)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			svids, err := testutil.FetchX509SVIDs(ctx, addr)
			cancel()
			found := false
			for _, s := range svids {
				found = found || s.ID == want
			}
			if err == nil && found {
				pr.ok.Add(1)
			} else {
				pr.bad.Add(1)
				pr.lastErr.Store(err)
			}
			select {
			case <-pr.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(pr.halt)
	return pr
}

func (pr *prober) halt() {
	pr.stopOnce.Do(func() { close(pr.stop) })
	<-pr.done
}

// TestPartition cuts the device off twice — link down, then a silent
// nftables drop — and heals each time. Throughout, the workload keeps
// getting its SVID (fresh connections and a long-lived go-spiffe source);
// after each heal the agent reconnects on its own: an entry created during
// the cut and one created after the heal both reach the workload. The
// server lost nothing.
func TestPartition(t *testing.T) {
	e := NewEnv(t)
	adm := e.Srv.Admin(t)
	addr := e.Agent.SocketAddr()
	base := e.Srv.ID("/workload/base")
	adm.CreateEntry(t, base, e.AgentID, uidSelector)
	testutil.RequireSVID(t, addr, base, reconnectDeadline)
	src := testutil.NewX509Source(t, addr, testutil.PickID(base))
	updates := testutil.WatchIDs(t, addr)
	testutil.WaitForID(t, updates, base, reconnectDeadline)
	pr := startProber(t, addr, base)
	created := []spiffeid.ID{base}

	cuts := []struct {
		name string
		cut  func(testing.TB)
	}{
		{"link-down", e.P.LinkDown},
		{"silent-drop", e.P.Drop},
	}
	for _, c := range cuts {
		c.cut(t)
		during := e.Srv.ID("/workload/during-" + c.name)
		adm.CreateEntry(t, during, e.AgentID, uidSelector)
		created = append(created, during)
		// Stay cut off for a while; the workload must not notice.
		time.Sleep(partitionFor)
		if s, err := src.GetX509SVID(); err != nil || s.ID != base {
			t.Fatalf("%s: source serves %v, %v; want %s", c.name, s, err, base)
		}
		healed := time.Now()
		e.P.Heal(t)

		testutil.WaitForID(t, updates, during, reconnectDeadline)
		after := e.Srv.ID("/workload/after-" + c.name)
		adm.CreateEntry(t, after, e.AgentID, uidSelector)
		created = append(created, after)
		testutil.WaitForID(t, updates, after, reconnectDeadline)
		t.Logf("%s: both entries delivered %v after the heal", c.name, time.Since(healed))
	}

	pr.halt()
	if pr.bad.Load() != 0 || pr.ok.Load() == 0 {
		t.Errorf("workload fetches during the partitions: %d ok, %d failed (last error: %v)", pr.ok.Load(), pr.bad.Load(), pr.lastErr.Load())
	}
	t.Logf("workload fetches: %d ok, %d failed", pr.ok.Load(), pr.bad.Load())
	for _, l := range strings.Split(e.Agent.Proc.Logs(), "\n") {
		if strings.Contains(l, "Server session ended") || strings.Contains(l, "Connected to the server") {
			t.Log("agent: " + l)
		}
	}

	// The server lost nothing.
	have := map[string]bool{}
	for _, en := range adm.ListEntries(t) {
		have[testutil.IDString(en.GetSpiffeId())] = true
	}
	for _, id := range created {
		if !have[id.String()] {
			t.Errorf("server lost entry %s", id)
		}
	}
	if agents := adm.ListAgents(t); len(agents) != 1 || agents[0].GetBanned() {
		t.Errorf("server lists %d agents (%v), want the one attested agent", len(agents), agents)
	}
}

// TestServerRestartedWhileCut: the device is silently cut off, and while
// it is the server restarts, so the agent's connection is dead on the
// server's side but still looks open to the agent. After the heal the
// agent must notice and open a new session by itself: an entry created
// while cut off and one created after the heal both reach the workload,
// and the workload was served throughout.
func TestServerRestartedWhileCut(t *testing.T) {
	e := NewEnv(t)
	adm := e.Srv.Admin(t)
	addr := e.Agent.SocketAddr()
	base := e.Srv.ID("/workload/base")
	adm.CreateEntry(t, base, e.AgentID, uidSelector)
	updates := testutil.WatchIDs(t, addr)
	testutil.WaitForID(t, updates, base, reconnectDeadline)
	pr := startProber(t, addr, base)

	e.P.Drop(t)
	e.Srv.Stop(t)
	e.Srv.Start(t)
	during := e.Srv.ID("/workload/during")
	adm.CreateEntry(t, during, e.AgentID, uidSelector)
	healed := time.Now()
	e.P.Heal(t)

	testutil.WaitForID(t, updates, during, reconnectDeadline)
	after := e.Srv.ID("/workload/after")
	adm.CreateEntry(t, after, e.AgentID, uidSelector)
	testutil.WaitForID(t, updates, after, reconnectDeadline)
	t.Logf("both entries delivered %v after the heal", time.Since(healed))

	pr.halt()
	if pr.bad.Load() != 0 || pr.ok.Load() == 0 {
		t.Errorf("workload fetches: %d ok, %d failed (last error: %v)", pr.ok.Load(), pr.bad.Load(), pr.lastErr.Load())
	}
	if n := strings.Count(e.Agent.Proc.Logs(), "Connected to the server"); n < 2 {
		t.Errorf("agent logged %d connections, want a new session after the heal", n)
	}
}
