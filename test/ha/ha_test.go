// Package ha runs several real sigil-server processes on one real
// PostgreSQL database (pgtest; skipped without PostgreSQL outside CI), with
// real sigil-agent processes and go-spiffe workloads: shared state, a join
// token consumed once across servers, a ban on one server enforced by the
// other's open sync stream, a write on one server pushed to an agent of the
// other (LISTEN/NOTIFY), and an agent failing over when its server is
// killed while a workload keeps fetching.
package ha

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // "pgx" driver, to count the servers' connections
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/internal/adminclient"
	"github.com/sigil-spiffe/sigil/internal/telemetry/telemetrytest"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, testutil.Cleanup)) }

// deadline bounds every wait: generous, the machine is shared.
const deadline = 30 * time.Second

var uidSelector = "unix:uid:" + strconv.Itoa(os.Getuid())

// pair starts two servers on one new PostgreSQL database.
func pair(t *testing.T) (a, b *testutil.Server) {
	t.Helper()
	ds := pgtest.DataStore(t)
	a = testutil.StartServer(t, testutil.ServerConfig{DataStore: ds})
	b = testutil.StartServer(t, testutil.ServerConfig{DataStore: ds})
	return a, b
}

// agentOn returns the configuration of an agent that knows only the
// servers given (in that order), bootstrapped with the shared bundle (both
// servers' CAs), attesting with token.
func agentOn(t *testing.T, token string, servers ...*testutil.Server) testutil.AgentConfig {
	t.Helper()
	cfg := testutil.AgentWith(t, servers[0], "", nil)
	cfg.ServerAddress, cfg.ServerPort = "", 0
	for _, s := range servers {
		cfg.ServerAddresses = append(cfg.ServerAddresses, s.Addr())
	}
	cfg.JoinToken = token
	return cfg
}

// connectedTo waits until the agent logs its connection to s.
func connectedTo(t *testing.T, a *testutil.Agent, s *testutil.Server) {
	t.Helper()
	connectedAfter(t, a, s, 0)
}

// connectedAfter waits until the agent logs, past byte offset of its log,
// its connection to s.
func connectedAfter(t *testing.T, a *testutil.Agent, s *testutil.Server, offset int) {
	t.Helper()
	err := testutil.Poll(deadline, 5*time.Millisecond, func() (bool, error) {
		logs := a.Proc.Logs()
		return len(logs) > offset && connectionAt(logs[offset:], s) >= 0, nil
	})
	if err != nil {
		t.Fatalf("the agent logged no connection to %s: %v\n%s", s.Addr(), err, a.Proc.Logs()[offset:])
	}
}

// TestSharedStateAndTokenOnce: what one server writes, the other serves
// (entries, agents, bundle); a join token created on A attests an agent
// through B, once: a second agent with it is refused by A.
func TestSharedStateAndTokenOnce(t *testing.T) {
	a, b := pair(t)
	if pa, pb := a.Admin(t).BundlePEM(t), b.Admin(t).BundlePEM(t); string(pa) != string(pb) || strings.Count(string(pa), "BEGIN CERTIFICATE") != 2 {
		t.Fatalf("bundles differ or do not hold both servers' CAs:\nA:\n%s\nB:\n%s", pa, pb)
	}
	agentID := a.ID("/agent/shared")
	token := a.Admin(t).CreateJoinToken(t, agentID)
	ag := testutil.StartAgent(t, agentOn(t, token, b))
	connectedTo(t, ag, b)

	wl := a.ID("/w/shared")
	a.Admin(t).CreateEntry(t, wl, agentID, uidSelector)
	testutil.RequireSVID(t, ag.SocketAddr(), wl, deadline)
	if got := b.Admin(t).ListEntries(t); len(got) != 2 { // the token's alias entry and ours
		t.Errorf("B lists %d entries, want 2", len(got))
	}
	if got := a.Admin(t).ListAgents(t); len(got) != 1 {
		t.Errorf("A lists %d agents, want the one attested through B", len(got))
	}

	// The same token, again, through A: refused, the agent exits.
	second := testutil.NewAgent(t, agentOn(t, token, a))
	second.StartProcess(t)
	log := second.Proc.WaitExit(t, deadline)
	if !strings.Contains(log, "join token does not exist or has already been used") {
		t.Errorf("second use of the token: the agent's log does not show the refusal:\n%s", log)
	}
	if got := a.Admin(t).ListAgents(t); len(got) != 1 {
		t.Errorf("%d agents after the second use, want 1", len(got))
	}
}

// TestBanOnOneServerClosesStreamOnOther: an agent connected only to B is
// banned through A's admin API; B's open sync stream for it ends (B
// learns of the ban by PostgreSQL notification) and the agent stops
// serving its workload.
func TestBanOnOneServerClosesStreamOnOther(t *testing.T) {
	a, b := pair(t)
	agentID := a.ID("/agent/banned")
	ag := testutil.StartAgent(t, agentOn(t, a.Admin(t).CreateJoinToken(t, agentID), b))
	wl := a.ID("/w/banned")
	a.Admin(t).CreateEntry(t, wl, agentID, uidSelector)
	testutil.RequireSVID(t, ag.SocketAddr(), wl, deadline)
	connectedTo(t, ag, b)

	agents := a.Admin(t).ListAgents(t)
	if len(agents) != 1 {
		t.Fatalf("%d agents, want 1", len(agents))
	}
	node := spiffeid.RequireFromPath(a.TrustDomain(), agents[0].GetId().GetPath())
	banned := time.Now()
	a.Admin(t).BanAgent(t, node)
	ag.Proc.WaitForLog(t, "AGENT_BANNED", deadline)
	t.Logf("agent learned of the ban %s after it was made on the other server", time.Since(banned).Round(time.Millisecond))
	err := testutil.Poll(deadline, 20*time.Millisecond, func() (bool, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(ag.SocketAddr()))
		return err != nil, nil
	})
	if err != nil {
		t.Fatal("the banned agent still serves its workload")
	}
}

// TestWriteOnOneServerReachesAgentOfOther: an entry created through A is
// pushed to a workload whose agent is connected only to B.
func TestWriteOnOneServerReachesAgentOfOther(t *testing.T) {
	a, b := pair(t)
	agentID := a.ID("/agent/push")
	ag := testutil.StartAgent(t, agentOn(t, a.Admin(t).CreateJoinToken(t, agentID), b))
	first := a.ID("/w/first")
	b.Admin(t).CreateEntry(t, first, agentID, uidSelector)
	ids := testutil.WatchIDs(t, ag.SocketAddr())
	testutil.WaitForID(t, ids, first, deadline)
	connectedTo(t, ag, b)

	for i := range 3 {
		id := a.ID("/w/through-a/" + strconv.Itoa(i))
		created := time.Now()
		a.Admin(t).CreateEntry(t, id, agentID, uidSelector)
		testutil.WaitForID(t, ids, id, deadline)
		t.Logf("entry %d created through A reached the workload on B's agent in %s", i, time.Since(created).Round(time.Millisecond))
	}
}

// TestFailover: an agent that knows both servers is connected to one;
// that server is killed (SIGKILL) while a go-spiffe workload fetches its
// SVID every 20 ms: the agent moves to the other server within a few
// seconds, not one fetch fails, and the agent serves entries created
// through the survivor. The killed server restarts with no manual step
// and takes the agent back when the survivor is killed in turn.
func TestFailover(t *testing.T) {
	a, b := pair(t)
	agentID := a.ID("/agent/failover")
	ag := testutil.StartAgent(t, agentOn(t, a.Admin(t).CreateJoinToken(t, agentID), a, b))
	wl := a.ID("/w/failover")
	a.Admin(t).CreateEntry(t, wl, agentID, uidSelector)
	testutil.RequireSVID(t, ag.SocketAddr(), wl, deadline)
	ids := testutil.WatchIDs(t, ag.SocketAddr())

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
				t.Errorf("workload fetch failed: %v", err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	defer func() {
		stop()
		<-polled
		t.Logf("%d workload fetches, %d failed", fetches.Load(), failed.Load())
	}()

	// Kill the server the agent is on; it moves to the other.
	on, other := currentServer(t, ag, a, b)
	for round := range 2 {
		before := fetches.Load()
		offset := len(ag.Proc.Logs())
		killed := time.Now()
		on.Proc.Kill()
		connectedAfter(t, ag, other, offset)
		t.Logf("round %d: agent reconnected to the other server %s after its server was killed", round, time.Since(killed).Round(time.Millisecond))
		id := spiffeid.RequireFromPath(agentID.TrustDomain(), "/w/after-failover/"+strconv.Itoa(round))
		other.Admin(t).CreateEntry(t, id, agentID, uidSelector)
		testutil.WaitForID(t, ids, id, deadline)
		waitFetches(t, &fetches, before+10)

		// The killed server comes back by itself (same data_dir, same
		// database); the next kill targets the survivor.
		on.Start(t)
		on, other = other, on
	}
	if failed.Load() != 0 {
		t.Fatalf("%d of %d workload fetches failed", failed.Load(), fetches.Load())
	}
}

// currentServer returns the server the agent logged its connection to
// first, and the other.
func currentServer(t *testing.T, ag *testutil.Agent, a, b *testutil.Server) (on, other *testutil.Server) {
	t.Helper()
	var got *testutil.Server
	err := testutil.Poll(deadline, 20*time.Millisecond, func() (bool, error) {
		logs := ag.Proc.Logs()
		ia, ib := connectionAt(logs, a), connectionAt(logs, b)
		switch {
		case ia >= 0 && (ib < 0 || ia < ib):
			got = a
		case ib >= 0:
			got = b
		}
		return got != nil, nil
	})
	if err != nil {
		t.Fatal("the agent logged no connection to either server")
	}
	if got == a {
		return a, b
	}
	return b, a
}

// connectionAt is the line number of the first "Connected to the server"
// line for s in logs, or -1.
func connectionAt(logs string, s *testutil.Server) int {
	for i, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, `msg="Connected to the server"`) && strings.Contains(l, " server="+s.Addr()) {
			return i
		}
	}
	return -1
}

func waitFetches(t *testing.T, n *atomic.Int64, want int64) {
	t.Helper()
	if err := testutil.Poll(deadline, 10*time.Millisecond, func() (bool, error) { return n.Load() >= want, nil }); err != nil {
		t.Fatalf("the workload made %d fetches, want %d", n.Load(), want)
	}
}

// TestFederationSharedAcrossServers: a federation relationship created
// through A is the database's: B refreshes the peer's bundle from its
// bundle endpoint too (its relationships are read again every 10 s), and
// a workload whose agent is on B gets that bundle.
func TestFederationSharedAcrossServers(t *testing.T) {
	port, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	peer := testutil.StartServer(t, testutil.ServerConfig{TrustDomain: "peer.test", BundleEndpoint: &testutil.BundleEndpoint{Port: port}})
	a, b := pair(t)
	var roots []*types.X509Certificate
	for _, c := range peer.Admin(t).BundleCerts(t) {
		roots = append(roots, &types.X509Certificate{Asn1: c.Raw})
	}
	created := time.Now()
	a.Admin(t).CreateFederationRelationship(t, &types.FederationRelationship{
		TrustDomain: "peer.test", BundleEndpointUrl: peer.Config.BundleEndpoint.URL(),
		BundleEndpointProfile: &types.FederationRelationship_HttpsSpiffe{HttpsSpiffe: &types.HTTPSSPIFFEProfile{EndpointSpiffeId: peer.ID("/spire/server").String()}},
		TrustDomainBundle:     &types.Bundle{TrustDomain: "peer.test", X509Authorities: roots},
	})
	b.Admin(t).WaitFederationRefreshed(t, "peer.test", created, deadline)

	agentID := b.ID("/agent/fed")
	ag := testutil.StartAgent(t, agentOn(t, a.Admin(t).CreateJoinToken(t, agentID), b))
	e, err := adminclient.NewEntry(b.ID("/fed-workload"), agentID, uidSelector)
	if err != nil {
		t.Fatal(err)
	}
	e.FederatesWith = []string{"peer.test"}
	a.Admin(t).CreateEntries(t, e)
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	err = testutil.Poll(deadline, 20*time.Millisecond, func() (bool, error) {
		c, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr(ag.SocketAddr()))
		if err != nil {
			return false, nil
		}
		_, ok := c.Bundles.Get(spiffeid.RequireTrustDomainFromString("peer.test"))
		return ok, nil
	})
	if err != nil {
		t.Fatalf("the workload of an agent on B got no peer.test bundle: %v", err)
	}
}

// TestConnectionsPerServer: what README's "PostgreSQL connections" counts
// on: a server holds at most max_open_conns connections to the database
// plus the one its listener holds, however many API calls it serves at
// once (the others wait for a connection; none fails).
func TestConnectionsPerServer(t *testing.T) {
	const maxOpen = 2
	ds := pgtest.DataStore(t)
	ds.Data["max_open_conns"] = maxOpen
	db, err := sql.Open("pgx", ds.Data["connection_string"].(string))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	a := testutil.StartServer(t, testutil.ServerConfig{DataStore: ds})
	b := testutil.StartServer(t, testutil.ServerConfig{DataStore: ds})

	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	// The servers' connections to this database, sampled until the calls
	// are done (the sampler's own left out).
	var peak atomic.Int64
	sampled := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			var n int64
			if err := db.QueryRowContext(ctx, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()").Scan(&n); err != nil {
				sampled <- err
				return
			}
			if n > peak.Load() {
				peak.Store(n)
			}
			select {
			case <-done:
				return
			default:
			}
		}
	}()
	const callers, calls = 16, 10
	errs := make(chan error, callers*calls)
	var wg sync.WaitGroup
	for c := range callers {
		srv := []*testutil.Server{a, b}[c%2]
		admin := srv.Admin(t)
		wg.Go(func() {
			for i := range calls {
				e, err := adminclient.NewEntry(srv.ID(fmt.Sprintf("/c%d/%d", c, i)), srv.ID("/agent"), uidSelector)
				if err == nil {
					_, err = admin.Client.CreateEntries(ctx, e)
				}
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(done)
	if err := <-sampled; err != nil {
		t.Fatal(err)
	}
	close(errs)
	for err := range errs {
		t.Errorf("a call failed while the pool was full: %v", err)
	}
	if n := len(a.Admin(t).ListEntries(t)); n != callers*calls {
		t.Fatalf("%d entries, want %d", n, callers*calls)
	}
	if p := peak.Load(); p > 2*(maxOpen+1) {
		t.Fatalf("the two servers held %d connections to the database at once, want at most 2 x (max_open_conns + 1) = %d", p, 2*(maxOpen+1))
	} else {
		t.Logf("peak: %d connections (2 servers, max_open_conns = %d)", p, maxOpen)
	}
}

// TestListenerMetric: sigil_server_datastore_listener_connected is 1 while
// the server's change listener is connected, 0 while it cannot reconnect
// (its connection terminated, the database refusing new connections), and
// 1 again once it can: what the SigilServerChangeListenerDown alert reads.
func TestListenerMetric(t *testing.T) {
	ds := pgtest.DataStore(t)
	port, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	srv := testutil.StartServer(t, testutil.ServerConfig{DataStore: ds, MetricsPort: port})
	var dbName string
	for _, kv := range strings.Fields(ds.Data["connection_string"].(string)) {
		if v, ok := strings.CutPrefix(kv, "dbname="); ok {
			dbName = v
		}
	}
	// The cluster's own database: the server's cannot be closed to new
	// connections from a connection to it.
	db, err := sql.Open("pgx", pgtest.Shared(t).ConnString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	waitGauge := func(want float64) {
		t.Helper()
		var last float64
		err := testutil.Poll(deadline, 20*time.Millisecond, func() (bool, error) {
			m, err := telemetrytest.Scrape(srv.MetricsURL())
			if err != nil {
				return false, nil
			}
			v, ok := m.Value("sigil_server_datastore_listener_connected")
			last = v
			return ok && v == want, nil
		})
		if err != nil {
			t.Fatalf("sigil_server_datastore_listener_connected = %v, want %v: %v", last, want, err)
		}
	}
	waitGauge(1)

	// No new connection to the database; the listener's terminated.
	if _, err := db.Exec(fmt.Sprintf("ALTER DATABASE %q ALLOW_CONNECTIONS false", dbName)); err != nil {
		t.Fatal(err)
	}
	allowed := false
	allow := func() {
		if !allowed {
			allowed = true
			if _, err := db.Exec(fmt.Sprintf("ALTER DATABASE %q ALLOW_CONNECTIONS true", dbName)); err != nil {
				t.Error(err)
			}
		}
	}
	defer allow()
	if _, err := db.Exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'", dbName); err != nil {
		t.Fatal(err)
	}
	waitGauge(0)
	allow()
	waitGauge(1)
}
