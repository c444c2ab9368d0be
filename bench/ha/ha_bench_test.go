// Package ha benchmarks several sigil-servers on one PostgreSQL database
// (pgtest: a cluster of its own per benchmark, with PostgreSQL's durable
// defaults), with simulated agents split across them: each is an attested
// agent client holding a watch-mode SyncAuthorizedEntries stream, as a
// real agent does, with entries of its own.
//
//   - BenchmarkHAEntryWrites: entries created per second through both
//     servers at once (single-entry BatchCreateEntry calls, each for a
//     simulated agent, whose stream then gets a round);
//   - BenchmarkHAEntryToWorkload: an entry created through server A until
//     a workload whose agent is connected to server B only receives its
//     X509-SVID, p50/p99; /notify with PostgreSQL LISTEN/NOTIFY,
//     /poll-only with the listener off (the 1 s journal poll, the
//     fallback and SPIRE-like baseline);
//   - BenchmarkHAFailover: real server and agent processes; the agent's
//     server is killed (SIGKILL) while a go-spiffe workload fetches every
//     10 ms: time until the agent runs a session on the other server,
//     and failed fetches.
//
// Skipped without PostgreSQL (outside CI).
package ha

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/bench/internal/stack"
	"github.com/sigil-spiffe/sigil/internal/agent/client"
	serverapp "github.com/sigil-spiffe/sigil/internal/app/server"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/pgtest"
)

// TestMain removes the binaries the failover benchmark builds.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, testutil.Cleanup)) }

// simAgents is the number of simulated agents, split evenly across the
// servers; simEntries is how many entries each has.
const (
	simAgents  = 100
	simEntries = 5
)

var uidSel = fmt.Sprintf("uid:%d", os.Getuid())

// haEnv is two in-process servers on one PostgreSQL database and the
// simulated agents (one server, b == a, for the single-server baseline).
type haEnv struct {
	a, b   *stack.Server
	agents []simAgent
	rounds atomic.Int64 // sync rounds the simulated agents received
}

type simAgent struct {
	id spiffeid.ID
	on *stack.Server
}

func newHAEnv(b *testing.B, opts serverapp.Options) *haEnv {
	return newEnv(b, opts, 2)
}

// newEnv starts servers (1 or 2) on one new PostgreSQL database.
func newEnv(b *testing.B, opts serverapp.Options, servers int) *haEnv {
	b.Helper()
	pg := pgtest.Start(b, pgtest.Options{Durable: true})
	ds := stack.PostgresDataStore(b, pg)
	e := &haEnv{a: stack.StartServerWith(b, ds, opts)}
	e.b = e.a
	if servers == 2 {
		e.b = stack.StartServerWith(b, ds, opts)
	}
	bundle := e.a.BundleCerts(b)
	if len(bundle) != servers {
		b.Fatalf("the bundle holds %d authorities, want %d (one per server)", len(bundle), servers)
	}
	for i := range simAgents {
		srv := e.a
		if i%2 == 1 {
			srv = e.b
		}
		// Agent IDs are numbered per stack.Server: A makes every token,
		// so they are unique.
		token, id := e.a.JoinToken(b)
		var entries []*types.Entry
		for j := range simEntries {
			entries = append(entries, stack.Entry(id, spiffeid.RequireFromSegments(stack.TrustDomain, "sim", fmt.Sprint(i), fmt.Sprint(j)), "uid:4242"))
		}
		srv.CreateEntries(b, entries...)
		cl := stack.AttestClient(b, srv.Addr, bundle, token)
		first := make(chan struct{})
		var once sync.Once
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		// Registered after the client's: the stream ends before the
		// client closes.
		b.Cleanup(func() { cancel(); <-done })
		go func() {
			defer close(done)
			err := cl.WatchEntries(ctx, nil, func(*client.Round) error {
				e.rounds.Add(1)
				once.Do(func() { close(first) })
				return nil
			})
			if err != nil && ctx.Err() == nil {
				b.Errorf("simulated agent %s: %v", id, err)
			}
		}()
		select {
		case <-first:
		case <-time.After(30 * time.Second):
			b.Fatalf("simulated agent %d got no first round", i)
		}
		e.agents = append(e.agents, simAgent{id: id, on: srv})
	}
	return e
}

// BenchmarkHAEntryWrites measures entries created per second through both
// servers at once: 4 writers, two per server, single-entry BatchCreateEntry
// calls for random simulated agents (every write is a round on one of the
// open streams, on either server). /one-server is the baseline: the same
// writers and simulated agents on one server of the same database.
func BenchmarkHAEntryWrites(b *testing.B) {
	for _, c := range []struct {
		name    string
		servers int
	}{{"two-servers", 2}, {"one-server", 1}} {
		b.Run(c.name, func(b *testing.B) { benchEntryWrites(b, c.servers) })
	}
}

func benchEntryWrites(b *testing.B, servers int) {
	e := newEnv(b, serverapp.Options{}, servers)
	const writers = 4
	var seq atomic.Int64
	ctx := context.Background()
	rounds0 := e.rounds.Load()
	b.ResetTimer()
	t0 := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for w := range writers {
		srv := e.a
		if w%2 == 1 {
			srv = e.b
		}
		wg.Go(func() {
			for {
				n := seq.Add(1)
				if n > int64(b.N) {
					return
				}
				ag := e.agents[rand.IntN(len(e.agents))]
				id := spiffeid.RequireFromSegments(stack.TrustDomain, "w", fmt.Sprint(n))
				if _, err := srv.Client.CreateEntries(ctx, stack.Entry(ag.id, id, "uid:4242")); err != nil {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(t0)
	b.StopTimer()
	if failed.Load() > 0 {
		b.Fatalf("%d writes failed", failed.Load())
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "entries/s")
	b.ReportMetric(float64(e.rounds.Load()-rounds0)/float64(b.N), "rounds/entry")
}

// BenchmarkHAEntryToWorkload measures an entry created through server A
// until a go-spiffe workload whose agent (in-process, server_addresses:
// B only) is connected to server B receives the X509-SVID: A's commit, the
// notification to B (or B's poll), B's cache, the push to the agent, key,
// CSR and signing on B, the agent's cache and the Workload API push. Each
// entry is deleted again (untimed, waited for) so every op sees the same
// state.
func BenchmarkHAEntryToWorkload(b *testing.B) {
	for _, c := range []struct {
		name string
		opts serverapp.Options
	}{{"notify", serverapp.Options{}}, {"poll-only", serverapp.Options{NoChangeListener: true}}} {
		b.Run(c.name, func(b *testing.B) { benchEntryToWorkload(b, c.opts) })
	}
}

func benchEntryToWorkload(b *testing.B, opts serverapp.Options) {
	e := newHAEnv(b, opts)
	token, agentID := e.a.JoinToken(b)
	first := spiffeid.RequireFromSegments(stack.TrustDomain, "workload", "first")
	e.a.CreateEntries(b, stack.Entry(agentID, first, uidSel))
	cfg := e.b.AgentConfig(b, filepath.Join(e.b.Dir, "agent"), token)
	cfg.ServerAddress, cfg.ServerPort, cfg.ServerAddresses = "", 0, []string{e.b.Addr}
	if err := cfg.Validate(); err != nil {
		b.Fatal(err)
	}
	agent := stack.StartAgent(b, cfg)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := stack.WatchX509(b, ctx, agent.Socket)
	waitFor, contains := w.WaitFor, stack.HasSVID
	if err := waitFor(contains(first)); err != nil {
		b.Fatal(err)
	}

	var lat stack.Latencies
	i := 0
	for b.Loop() {
		i++
		id := spiffeid.RequireFromSegments(stack.TrustDomain, "new", fmt.Sprint(i))
		t0 := time.Now()
		ids, err := e.a.Client.CreateEntries(ctx, stack.Entry(agentID, id, uidSel))
		if err != nil {
			b.Fatal(err)
		}
		if err := waitFor(contains(id)); err != nil {
			b.Fatal(err)
		}
		lat.Add(time.Since(t0))

		b.StopTimer()
		if err := e.a.Client.DeleteEntries(ctx, ids...); err != nil {
			b.Fatal(err)
		}
		gone := contains(id)
		if err := waitFor(func(u *workloadapi.X509Context) bool { return !gone(u) }); err != nil {
			b.Fatal(err)
		}
		// Spread the creations over the journal poll period (1 s), so
		// that poll-only measures the fallback's whole range.
		time.Sleep(time.Duration(rand.IntN(1000)) * time.Millisecond)
		b.StartTimer()
	}
	lat.Report(b)
}

// BenchmarkHABan measures a ban made through server A until the open
// sync stream of that agent on server B ends (PermissionDenied
// AGENT_BANNED): A's commit, the notification to B (or B's poll), B's
// node cache, the stream's re-check. Each op attests a new simulated agent
// through B (untimed).
func BenchmarkHABan(b *testing.B) {
	for _, c := range []struct {
		name string
		opts serverapp.Options
	}{{"notify", serverapp.Options{}}, {"poll-only", serverapp.Options{NoChangeListener: true}}} {
		b.Run(c.name, func(b *testing.B) { benchBan(b, c.opts) })
	}
}

func benchBan(b *testing.B, opts serverapp.Options) {
	e := newHAEnv(b, opts)
	bundle := e.a.BundleCerts(b)
	var lat stack.Latencies
	for b.Loop() {
		b.StopTimer()
		token, id := e.a.JoinToken(b)
		cl := stack.AttestClient(b, e.b.Addr, bundle, token)
		nodeID := agentIDOf(b, e.a, id)
		ctx, cancel := context.WithCancel(context.Background())
		first := make(chan struct{})
		ended := make(chan error, 1)
		var once sync.Once
		go func() {
			ended <- cl.WatchEntries(ctx, nil, func(*client.Round) error {
				once.Do(func() { close(first) })
				return nil
			})
		}()
		select {
		case <-first:
		case err := <-ended:
			b.Fatalf("stream ended before its first round: %v", err)
		case <-time.After(30 * time.Second):
			b.Fatal("no first round")
		}
		// Spread the bans over the journal poll period (1 s).
		time.Sleep(time.Duration(rand.IntN(1000)) * time.Millisecond)
		b.StartTimer()
		t0 := time.Now()
		e.a.BanAgent(b, nodeID)
		select {
		case err := <-ended:
			if r, ok := client.RefusalOf(err); !ok || !r.Revokes() {
				b.Fatalf("stream ended with %v, want the ban's refusal", err)
			}
		case <-time.After(30 * time.Second):
			b.Fatal("the banned agent's stream on the other server stayed open")
		}
		lat.Add(time.Since(t0))
		cancel()
	}
	lat.Report(b)
}

// agentIDOf is the SPIFFE ID of the agent attested with the join token
// made for alias (the token's agent ID is spire/agent/join_token/<token>,
// found through the alias entry's parent).
func agentIDOf(b *testing.B, s *stack.Server, alias spiffeid.ID) spiffeid.ID {
	b.Helper()
	for _, e := range s.ListEntries(b) {
		if e.GetSpiffeId().GetPath() == alias.Path() {
			return spiffeid.RequireFromPath(stack.TrustDomain, e.GetParentId().GetPath())
		}
	}
	b.Fatalf("no alias entry for %s", alias)
	return spiffeid.ID{}
}

// BenchmarkHAFailover measures failover with real processes: two
// sigil-servers on one PostgreSQL database and a sigil-agent that knows
// both (server_addresses) serving a go-spiffe workload that fetches its
// X509-SVID every 10 ms. Each op kills (SIGKILL) the server the agent is
// on and measures the time from the kill to the agent's "Connected to the
// server" line for the other server (the first sync round of its new
// session); the killed server is then restarted (untimed). Reported:
// failover-ms p50/max, and failed-fetches (total over the run).
func BenchmarkHAFailover(b *testing.B) {
	ds := pgtest.Start(b, pgtest.Options{Durable: true}).DataStore(b)
	srvA := testutil.StartServer(b, testutil.ServerConfig{DataStore: ds, LogLevel: "INFO"})
	srvB := testutil.StartServer(b, testutil.ServerConfig{DataStore: ds, LogLevel: "INFO"})
	agentID := srvA.ID("/agent/failover")
	cfg := testutil.AgentWith(b, srvA, "", nil)
	cfg.ServerAddress, cfg.ServerPort = "", 0
	cfg.ServerAddresses = []string{srvA.Addr(), srvB.Addr()}
	cfg.JoinToken = srvA.Admin(b).CreateJoinToken(b, agentID)
	cfg.LogLevel = "INFO"
	wl := srvA.ID("/w/failover")
	srvA.Admin(b).CreateEntry(b, wl, agentID, "unix:"+uidSel)
	ag := testutil.StartAgent(b, cfg)
	testutil.RequireSVID(b, ag.SocketAddr(), wl, 30*time.Second)

	var fetches, failed atomic.Int64
	ctx, stop := context.WithCancel(context.Background())
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		for ctx.Err() == nil {
			fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			svid, err := workloadapi.FetchX509SVID(fctx, workloadapi.WithAddr(ag.SocketAddr()))
			cancel()
			if ctx.Err() != nil {
				return
			}
			fetches.Add(1)
			if err != nil || svid.ID != wl {
				failed.Add(1)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	defer func() { stop(); <-polled }()

	on, other := srvA, srvB
	if lineFor(b, ag.Proc.Logs(), 0, srvB) >= 0 && lineFor(b, ag.Proc.Logs(), 0, srvA) < 0 {
		on, other = srvB, srvA
	}
	var lat stack.Latencies
	for b.Loop() {
		offset := len(ag.Proc.Logs())
		killed := time.Now()
		on.Proc.Kill()
		var connectedAt time.Time
		if err := testutil.Poll(30*time.Second, time.Millisecond, func() (bool, error) {
			t, ok := connectedLine(ag.Proc.Logs(), offset, other)
			connectedAt = t
			return ok, nil
		}); err != nil {
			b.Fatalf("the agent did not move to the other server: %v", err)
		}
		lat.Add(connectedAt.Sub(killed))
		b.StopTimer()
		on.Start(b)
		on, other = other, on
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(float64(lat.Percentile(50).Microseconds())/1000, "failover-ms-p50")
	b.ReportMetric(float64(lat.Percentile(100).Microseconds())/1000, "failover-ms-max")
	b.ReportMetric(float64(failed.Load()), "failed-fetches")
	b.ReportMetric(float64(fetches.Load())/float64(b.N), "fetches/op")
}

// connectedLine finds, past offset of logs, the agent's "Connected to the
// server" line for s and returns its timestamp (the log's time= field,
// milliseconds).
func connectedLine(logs string, offset int, s *testutil.Server) (time.Time, bool) {
	if len(logs) <= offset {
		return time.Time{}, false
	}
	for _, l := range strings.Split(logs[offset:], "\n") {
		if !strings.Contains(l, `msg="Connected to the server"`) || !strings.Contains(l, " server="+s.Addr()) {
			continue
		}
		f, _, ok := strings.Cut(strings.TrimPrefix(l, "time="), " ")
		if !ok {
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, f)
		if err != nil {
			continue
		}
		return t, true
	}
	return time.Time{}, false
}

// lineFor is the line number of the first connection to s past offset,
// or -1.
func lineFor(b *testing.B, logs string, offset int, s *testutil.Server) int {
	b.Helper()
	for i, l := range strings.Split(logs[offset:], "\n") {
		if strings.Contains(l, `msg="Connected to the server"`) && strings.Contains(l, " server="+s.Addr()) {
			return i
		}
	}
	return -1
}
