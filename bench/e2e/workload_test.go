package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/sigil-spiffe/sigil/bench/internal/stack"
	"github.com/sigil-spiffe/sigil/internal/config"
)

// env is a server and one attested agent with an entry for this process's
// uid, whose SVID the Workload API already serves.
type env struct {
	srv      *stack.Server
	agent    *stack.Agent
	agentCfg *config.Agent
	agentID  spiffeid.ID
	uidSel   string
	id       spiffeid.ID // the uid entry's SPIFFE ID
}

func newEnv(b *testing.B) *env {
	b.Helper()
	srv := stack.StartServer(b)
	token, agentID := srv.JoinToken(b)
	e := &env{srv: srv, agentID: agentID, uidSel: fmt.Sprintf("uid:%d", os.Getuid())}
	e.id = spiffeid.RequireFromSegments(stack.TrustDomain, "workload", "bench")
	srv.CreateEntries(b, stack.Entry(agentID, e.id, e.uidSel))
	e.agentCfg = srv.AgentConfig(b, filepath.Join(srv.Dir, "agent"), token)
	e.agent = stack.StartAgent(b, e.agentCfg)
	if _, err := fetchUntil(e.agent.Socket, e.id, 30*time.Second); err != nil {
		b.Fatal(err)
	}
	return e
}

// fetchUntil retries a one-shot FetchX509SVID (a new go-spiffe client each
// time, as a starting workload would) until it returns an SVID with id.
// It returns how many attempts were made.
func fetchUntil(addr string, id spiffeid.ID, timeout time.Duration) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for n := 1; ; n++ {
		svids, err := workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr(addr))
		if err == nil {
			for _, s := range svids {
				if s.ID == id {
					return n, nil
				}
			}
			err = fmt.Errorf("%d SVIDs, none for %s", len(svids), id)
		}
		select {
		case <-ctx.Done():
			return n, fmt.Errorf("fetch X509-SVID for %s: %w", id, err)
		case <-time.After(time.Millisecond):
		}
	}
}

// BenchmarkWorkloadAPI measures warm Workload API calls through the real
// go-spiffe client (created once) against an in-process agent: the
// workload is attested (SO_PEERCRED, /proc) on every call and served from
// the agent's cache. Reports p50-ms and p99-ms of the recorded calls.
func BenchmarkWorkloadAPI(b *testing.B) {
	e := newEnv(b)
	ctx := context.Background()
	c, err := workloadapi.New(ctx, workloadapi.WithAddr(e.agent.Socket))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()

	b.Run("FetchX509SVID", func(b *testing.B) {
		var lat stack.Latencies
		check := func() error {
			s, err := c.FetchX509SVID(ctx)
			if err == nil && s.ID != e.id {
				err = fmt.Errorf("got %s, want %s", s.ID, e.id)
			}
			return err
		}
		if err := check(); err != nil { // warm
			b.Fatal(err)
		}
		cpu0, wait0 := stack.CPUTime(), stack.RunqueueWait()
		for b.Loop() {
			t0 := time.Now()
			err := check()
			lat.Add(time.Since(t0))
			if err != nil {
				b.Fatal(err)
			}
		}
		lat.Report(b)
		reportCPU(b, cpu0, wait0)
	})
	b.Run("FetchJWTSVID", func(b *testing.B) {
		var lat stack.Latencies
		params := jwtsvid.Params{Audience: "bench-audience"}
		check := func() error {
			s, err := c.FetchJWTSVID(ctx, params)
			if err == nil && s.ID != e.id {
				err = fmt.Errorf("got %s, want %s", s.ID, e.id)
			}
			return err
		}
		if err := check(); err != nil { // warm: the first call mints via the server
			b.Fatal(err)
		}
		cpu0, wait0 := stack.CPUTime(), stack.RunqueueWait()
		for b.Loop() {
			t0 := time.Now()
			err := check()
			lat.Add(time.Since(t0))
			if err != nil {
				b.Fatal(err)
			}
		}
		lat.Report(b)
		reportCPU(b, cpu0, wait0)
	})
}

// BenchmarkEntryToWorkload measures a new registration entry, created
// through the admin API, until a workload watching the Workload API (a
// go-spiffe X.509 watcher open on the agent's socket as this uid) receives
// the update carrying its SPIFFE ID: server commit, push to the agent, key
// generation, CSR, signing, cache update, Workload API push. Each entry
// is deleted again (untimed) so every op sees the same state.
func BenchmarkEntryToWorkload(b *testing.B) {
	e := newEnv(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	updates := make(chan *workloadapi.X509Context, 16)
	w := &watcher{updates: updates}
	c, err := workloadapi.New(ctx, workloadapi.WithAddr(e.agent.Socket))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	watchDone := make(chan error, 1)
	go func() { watchDone <- c.WatchX509Context(ctx, w) }()
	// waitFor consumes updates until has(update) holds.
	waitFor := func(has func(*workloadapi.X509Context) bool) error {
		timeout := time.After(30 * time.Second)
		for {
			select {
			case u := <-updates:
				if has(u) {
					return nil
				}
			case err := <-watchDone:
				return fmt.Errorf("watch ended: %w", err)
			case <-timeout:
				return errors.New("no matching update after 30s")
			}
		}
	}
	contains := func(id spiffeid.ID) func(*workloadapi.X509Context) bool {
		return func(u *workloadapi.X509Context) bool {
			for _, s := range u.SVIDs {
				if s.ID == id {
					return true
				}
			}
			return false
		}
	}
	if err := waitFor(contains(e.id)); err != nil {
		b.Fatal(err)
	}

	var lat stack.Latencies
	i := 0
	for b.Loop() {
		i++
		id := spiffeid.RequireFromSegments(stack.TrustDomain, "new", fmt.Sprint(i))
		t0 := time.Now()
		ids, err := e.srv.TryCreateEntries(ctx, stack.Entry(e.agentID, id, e.uidSel))
		if err != nil {
			b.Fatal(err)
		}
		if err := waitFor(contains(id)); err != nil {
			b.Fatal(err)
		}
		lat.Add(time.Since(t0))

		b.StopTimer()
		if err := e.srv.DeleteEntries(ctx, ids...); err != nil {
			b.Fatal(err)
		}
		gone := contains(id)
		if err := waitFor(func(u *workloadapi.X509Context) bool { return !gone(u) }); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	lat.Report(b)
}

// reportCPU reports cpu-us/op, the process's CPU time (workload client and
// agent together) per op since cpu0, and runq-us/op, the time its threads
// waited for a CPU per op since wait0 (how busy the machine was).
func reportCPU(b *testing.B, cpu0, wait0 time.Duration) {
	b.ReportMetric(float64((stack.CPUTime()-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
	b.ReportMetric(float64((stack.RunqueueWait()-wait0).Microseconds())/float64(b.N), "runq-us/op")
}

type watcher struct {
	updates chan<- *workloadapi.X509Context
}

func (w *watcher) OnX509ContextUpdate(u *workloadapi.X509Context) { w.updates <- u }
func (w *watcher) OnX509ContextWatchError(error)                  {}

// BenchmarkAgentStart measures an agent that attested before (agent SVID,
// workload SVIDs and entries persisted in its data dir; the entry already
// registered) from agent.New until a workload's FetchX509SVID succeeds.
// Shutting the previous agent down is not timed.
func BenchmarkAgentStart(b *testing.B) {
	e := newEnv(b)
	e.agent.Stop()
	cfg := *e.agentCfg
	cfg.JoinToken = "" // attested already; a used token would be refused
	var lat stack.Latencies
	attempts := 0
	for b.Loop() {
		t0 := time.Now()
		a, err := stack.RunAgent(&cfg)
		if err != nil {
			b.Fatal(err)
		}
		n, err := fetchUntil(a.Socket, e.id, 30*time.Second)
		lat.Add(time.Since(t0))
		attempts += n
		b.StopTimer()
		a.Stop()
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	lat.Report(b)
	b.ReportMetric(float64(attempts)/float64(lat.Len()), "fetches/op")
}
