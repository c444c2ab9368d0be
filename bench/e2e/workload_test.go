package e2e

import (
	"context"
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
// go-spiffe client (created once); the workload is attested (SO_PEERCRED,
// /proc) on every call and served from the agent's cache. Reports p50-ms
// and p99-ms of the recorded calls.
//
// The -proc variants are what a user sees: a release-built sigil-agent
// (CGO_ENABLED=0, grpcnotrace) and a sigil-server run as separate
// processes, only the client in the benchmark process; they also report
// agent-cpu-us/op, the agent process's own CPU time per call (10 ms
// resolution). They run first and their processes are stopped before the
// in-process variants, in which client, agent and server share one process
// (and its GC and scheduler).
func BenchmarkWorkloadAPI(b *testing.B) {
	ctx := context.Background()

	procSrv := stack.StartServerProcess(b)
	token, agentID := procSrv.JoinToken(b)
	procID := spiffeid.RequireFromSegments(stack.TrustDomain, "workload", "bench")
	procSrv.CreateEntries(b, stack.Entry(agentID, procID, fmt.Sprintf("uid:%d", os.Getuid())))
	agentProc := procSrv.StartAgentProcess(b, token)
	if _, err := fetchUntil(agentProc.Socket, procID, 30*time.Second); err != nil {
		b.Fatal(err)
	}
	pc, err := workloadapi.New(ctx, workloadapi.WithAddr(agentProc.Socket))
	if err != nil {
		b.Fatal(err)
	}
	b.Run("FetchX509SVID-proc", func(b *testing.B) { benchFetchX509SVID(b, pc, procID, agentProc.Pid) })
	b.Run("FetchJWTSVID-proc", func(b *testing.B) { benchFetchJWTSVID(b, pc, procID, agentProc.Pid) })
	pc.Close()
	if err := agentProc.Proc.Stop(); err != nil {
		b.Logf("stop sigil-agent: %v", err)
	}
	if err := procSrv.StopProcess(); err != nil {
		b.Logf("stop sigil-server: %v", err)
	}

	e := newEnv(b)
	c, err := workloadapi.New(ctx, workloadapi.WithAddr(e.agent.Socket))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.Run("FetchX509SVID", func(b *testing.B) { benchFetchX509SVID(b, c, e.id, 0) })
	b.Run("FetchJWTSVID", func(b *testing.B) { benchFetchJWTSVID(b, c, e.id, 0) })
}

func benchFetchX509SVID(b *testing.B, c *workloadapi.Client, id spiffeid.ID, agentPid int) {
	ctx := context.Background()
	benchCalls(b, agentPid, func() error {
		s, err := c.FetchX509SVID(ctx)
		if err == nil && s.ID != id {
			err = fmt.Errorf("got %s, want %s", s.ID, id)
		}
		return err
	})
}

func benchFetchJWTSVID(b *testing.B, c *workloadapi.Client, id spiffeid.ID, agentPid int) {
	ctx := context.Background()
	params := jwtsvid.Params{Audience: "bench-audience"}
	// The first call (the warm-up in benchCalls) mints via the server.
	benchCalls(b, agentPid, func() error {
		s, err := c.FetchJWTSVID(ctx, params)
		if err == nil && s.ID != id {
			err = fmt.Errorf("got %s, want %s", s.ID, id)
		}
		return err
	})
}

// benchCalls times call in a b.Loop after one untimed warm-up call and
// reports latency percentiles, this process's CPU per op and, for an agent
// process (agentPid > 0), agent-cpu-us/op.
func benchCalls(b *testing.B, agentPid int, call func() error) {
	if err := call(); err != nil {
		b.Fatal(err)
	}
	var agent0 time.Duration
	if agentPid > 0 {
		var err error
		if agent0, err = stack.ProcessCPUTime(agentPid); err != nil {
			b.Fatal(err)
		}
	}
	lat := stack.Latencies{}
	cpu0, wait0 := stack.CPUTime(), stack.RunqueueWait()
	for b.Loop() {
		t0 := time.Now()
		err := call()
		lat.Add(time.Since(t0))
		if err != nil {
			b.Fatal(err)
		}
	}
	lat.Report(b)
	reportCPU(b, cpu0, wait0)
	if agentPid > 0 {
		agent1, err := stack.ProcessCPUTime(agentPid)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64((agent1-agent0).Microseconds())/float64(b.N), "agent-cpu-us/op")
	}
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
	w := stack.WatchX509(b, ctx, e.agent.Socket)
	waitFor, contains := w.WaitFor, stack.HasSVID
	if err := waitFor(contains(e.id)); err != nil {
		b.Fatal(err)
	}

	var lat stack.Latencies
	i := 0
	for b.Loop() {
		i++
		id := spiffeid.RequireFromSegments(stack.TrustDomain, "new", fmt.Sprint(i))
		t0 := time.Now()
		ids, err := e.srv.Client.CreateEntries(ctx, stack.Entry(e.agentID, id, e.uidSel))
		if err != nil {
			b.Fatal(err)
		}
		if err := waitFor(contains(id)); err != nil {
			b.Fatal(err)
		}
		lat.Add(time.Since(t0))

		b.StopTimer()
		if err := e.srv.Client.DeleteEntries(ctx, ids...); err != nil {
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

// reportCPU reports cpu-us/op, the benchmark process's CPU time (workload
// client, plus agent and server when they run in-process) per op since cpu0, and runq-us/op, the time its threads
// waited for a CPU per op since wait0 (how busy the machine was).
func reportCPU(b *testing.B, cpu0, wait0 time.Duration) {
	b.ReportMetric(float64((stack.CPUTime()-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
	b.ReportMetric(float64((stack.RunqueueWait()-wait0).Microseconds())/float64(b.N), "runq-us/op")
}

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
