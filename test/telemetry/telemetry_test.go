// Package telemetry runs real sigil-server and sigil-agent processes with
// the telemetry Prometheus exporter and the audit log enabled, scrapes
// their metrics with the Prometheus text parser and reads their logs, and
// checks that each value moves with the action that should move it.
package telemetry

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/telemetry/telemetrytest"
	"github.com/sigil-spiffe/sigil/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.Main(m)) }

// wait bounds conditions that normally hold within milliseconds; nothing
// asserts on timing.
const wait = 20 * time.Second

func freePort(t *testing.T) int {
	t.Helper()
	p, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// scrape reads url once with the Prometheus text parser.
func scrape(t *testing.T, url string) telemetrytest.Samples {
	t.Helper()
	m, err := telemetrytest.Scrape(url)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// waitMetrics scrapes url until cond holds, failing after wait with the
// last scrape's reason.
func waitMetrics(t *testing.T, url, what string, cond func(m telemetrytest.Samples) error) telemetrytest.Samples {
	t.Helper()
	var last telemetrytest.Samples
	var lastErr error
	err := testutil.Poll(wait, 50*time.Millisecond, func() (bool, error) {
		m, err := telemetrytest.Scrape(url)
		if err != nil {
			lastErr = err
			return false, nil
		}
		last = m
		lastErr = cond(m)
		return lastErr == nil, nil
	})
	if err != nil {
		t.Fatalf("%s: %v (last: %v)", what, err, lastErr)
	}
	return last
}

// equal is a condition: the sample of name with labels is want.
func equal(name string, want float64, labels ...string) func(telemetrytest.Samples) error {
	return func(m telemetrytest.Samples) error {
		if v, ok := m.Value(name, labels...); !ok || v != want {
			return fmt.Errorf("%s%v = %v (present %v), want %v", name, labels, v, ok, want)
		}
		return nil
	}
}

// TestExporters: with `telemetry { Prometheus { host port } }` both
// processes serve their registry, in a format the Prometheus parser
// accepts; the agent serves the same registry on the health listener's
// /metrics, and its state gauges keep their names.
func TestExporters(t *testing.T) {
	srv := testutil.StartServer(t, testutil.ServerConfig{MetricsPort: freePort(t)})
	cfg := testutil.AgentFor(t, srv, "/agent/m1", "")
	cfg.MetricsPort = freePort(t)
	cfg.HealthPort = freePort(t)
	agent := testutil.StartAgent(t, cfg)

	sm := scrape(t, srv.MetricsURL())
	if _, ok := sm.Value("go_goroutines"); !ok {
		t.Fatalf("server exporter: no go_goroutines")
	}
	waitMetrics(t, agent.MetricsURL(), "agent connected", func(m telemetrytest.Samples) error {
		if err := equal("sigil_agent_connected", 1)(m); err != nil {
			return err
		}
		return equal("sigil_agent_state", 1, "state", "connected")(m)
	})
	health := scrape(t, "http://127.0.0.1:"+strconv.Itoa(cfg.HealthPort)+"/metrics")
	if v := health.Get("sigil_agent_state", "state", "connected"); v != 1 {
		t.Fatalf("health listener /metrics: sigil_agent_state{state=connected} = %v", v)
	}
	for _, name := range []string{"sigil_agent_degraded_since_seconds", "sigil_agent_earliest_svid_expiry_seconds", "sigil_agent_svids",
		"sigil_agent_last_sync_timestamp_seconds", "sigil_agent_agent_svid_expiry_seconds"} {
		if _, ok := health.Value(name); !ok {
			t.Errorf("health listener /metrics: no %s", name)
		}
	}
}

var uidSelector = "unix:uid:" + strconv.Itoa(os.Getuid())

// atLeast is a condition: the sample of name with labels is >= want.
func atLeast(name string, want float64, labels ...string) func(telemetrytest.Samples) error {
	return func(m telemetrytest.Samples) error {
		if v := m.Get(name, labels...); v < want {
			return fmt.Errorf("%s%v = %v, want >= %v", name, labels, v, want)
		}
		return nil
	}
}

// all is a condition: every one of conds holds.
func all(conds ...func(telemetrytest.Samples) error) func(telemetrytest.Samples) error {
	return func(m telemetrytest.Samples) error {
		for _, c := range conds {
			if err := c(m); err != nil {
				return err
			}
		}
		return nil
	}
}

// TestServerMetricsMove: each action moves the server metrics that should
// move: an attestation, a failed one (another agent process with an
// unknown token), an entry create, a workload's SVID, a ban.
func TestServerMetricsMove(t *testing.T) {
	srv := testutil.StartServer(t, testutil.ServerConfig{MetricsPort: freePort(t)})
	url := srv.MetricsURL()
	admin := srv.Admin(t)
	const agentSvc, entrySvc = "spire.api.server.agent.v1.Agent", "spire.api.server.entry.v1.Entry"

	m := scrape(t, url)
	now := float64(time.Now().Unix())
	if e := m.Get("sigil_server_ca_expiry_timestamp_seconds", "kind", "x509"); e <= now {
		t.Errorf("X.509 CA expiry %v, want after now (%v)", e, now)
	}
	if e := m.Get("sigil_server_ca_expiry_timestamp_seconds", "kind", "jwt"); e <= now {
		t.Errorf("JWT key expiry %v, want after now (%v)", e, now)
	}
	if i := m.Get("sigil_server_ca_issued_timestamp_seconds", "kind", "x509"); i <= 0 || i > now+60 {
		t.Errorf("X.509 CA issued at %v", i)
	}
	waitMetrics(t, url, "entry cache syncing", atLeast("sigil_server_entry_cache_last_sync_timestamp_seconds", now-60))
	if m.Get("sigil_server_datastore_operation_duration_seconds", "operation", "GetCAJournal") < 1 {
		t.Errorf("datastore operations not observed: %v", m.Series("sigil_server_datastore_operation_duration_seconds"))
	}

	// An attestation (the token was created over the admin socket).
	cfg := testutil.AgentFor(t, srv, "/agent/m1", "")
	cfg.MetricsPort = freePort(t)
	agent := testutil.StartAgent(t, cfg)
	aliasID, agentID := srv.ID("/agent/m1"), admin.JoinTokenAgentID(cfg.JoinToken)
	// (Join token attestation creates the token's node alias entry.)
	waitMetrics(t, url, "the attestation", all(
		equal("sigil_server_node_attestations_total", 1, "attestor", "join_token", "result", "success"),
		equal("sigil_server_agents", 1, "banned", "false"),
		equal("sigil_server_entries", 1),
		atLeast("sigil_server_svids_signed_total", 1, "kind", "agent_x509"),
		atLeast("sigil_server_rpcs_total", 1, "service", agentSvc, "method", "CreateJoinToken", "code", "OK"),
		equal("sigil_server_sync_streams", 1),
	))

	// A failed attestation: an agent with a token the server never issued
	// exits, and the failure is counted.
	bad := testutil.AgentWith(t, srv, "", nil)
	bad.JoinToken = "not-a-token"
	badAgent := testutil.NewAgent(t, bad)
	badAgent.StartProcess(t)
	badAgent.Proc.WaitExit(t, wait)
	waitMetrics(t, url, "the failed attestation", all(
		equal("sigil_server_node_attestations_total", 1, "attestor", "join_token", "result", "failure"),
		equal("sigil_server_rpcs_total", 1, "service", agentSvc, "method", "AttestAgent", "code", "InvalidArgument"),
	))

	// An entry, and the workload SVID it leads to.
	workload := srv.ID("/workload")
	admin.CreateEntry(t, workload, aliasID, uidSelector)
	testutil.RequireSVID(t, agent.SocketAddr(), workload, wait)
	m = waitMetrics(t, url, "the entry and its SVID", all(
		equal("sigil_server_entries", 2),
		atLeast("sigil_server_rpcs_total", 1, "service", entrySvc, "method", "BatchCreateEntry", "code", "OK"),
		atLeast("sigil_server_svids_signed_total", 1, "kind", "x509"),
		atLeast("sigil_server_rpcs_total", 1, "service", "spire.api.server.svid.v1.SVID", "method", "BatchNewX509SVID", "code", "OK"),
		atLeast("sigil_server_entry_cache_apply_lag_seconds", 1),
	))
	if m.Get("sigil_server_datastore_operation_duration_seconds", "operation", "CreateEntries") < 1 {
		t.Errorf("CreateEntries not observed: %v", m.Series("sigil_server_datastore_operation_duration_seconds"))
	}
	if errs := m.Series("sigil_server_datastore_operation_errors_total"); len(errs) != 0 {
		t.Errorf("datastore errors on a healthy store: %v", errs)
	}

	// A ban: the agent is counted as banned and its stream ends.
	admin.BanAgent(t, agentID)
	waitMetrics(t, url, "the ban", all(
		equal("sigil_server_agents", 1, "banned", "true"),
		equal("sigil_server_agents", 0, "banned", "false"),
		equal("sigil_server_rpcs_total", 1, "service", agentSvc, "method", "BanAgent", "code", "OK"),
		equal("sigil_server_sync_streams", 0),
	))
}

// TestAgentMetricsMove: a workload's fetches move the agent's call,
// attestor, sync and renewal metrics; the agent's state follows the
// server going away and coming back.
func TestAgentMetricsMove(t *testing.T) {
	srv := testutil.StartServer(t, testutil.ServerConfig{})
	cfg := testutil.AgentFor(t, srv, "/agent/m2", "")
	cfg.MetricsPort = freePort(t)
	agent := testutil.StartAgent(t, cfg)
	url := agent.MetricsURL()
	const wlSvc = "SpiffeWorkloadAPI"

	waitMetrics(t, url, "the first sync", all(
		equal("sigil_agent_connected", 1),
		atLeast("sigil_agent_sync_duration_seconds", 1),
		atLeast("sigil_agent_entries", 1), // the join token's node alias entry
	))
	before := scrape(t, url)

	workload := srv.ID("/workload")
	srv.Admin(t).CreateEntry(t, workload, srv.ID("/agent/m2"), uidSelector)
	testutil.RequireSVID(t, agent.SocketAddr(), workload, wait)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if _, err := testutil.FetchX509SVIDs(ctx, agent.SocketAddr()); err != nil {
		t.Fatal(err)
	}
	m := waitMetrics(t, url, "the workload's fetches", all(
		atLeast("sigil_agent_rpcs_total", 2, "service", wlSvc, "method", "FetchX509SVID", "code", "OK"),
		atLeast("sigil_agent_rpc_duration_seconds", 2, "service", wlSvc, "method", "FetchX509SVID"),
		atLeast("sigil_agent_workload_attestor_duration_seconds", 2, "attestor", "unix"),
		atLeast("sigil_agent_svid_renewals_total", before.Get("sigil_agent_svid_renewals_total", "kind", "workload", "result", "success")+1, "kind", "workload", "result", "success"),
		atLeast("sigil_agent_svids", 2),
		atLeast("sigil_agent_entries", 2),
		atLeast("sigil_agent_sync_duration_seconds", before.Get("sigil_agent_sync_duration_seconds")+1), // the round that brought the entry
	))
	if e := m.Get("sigil_agent_workload_attestor_errors_total", "attestor", "unix"); e != 0 {
		t.Errorf("unix attestor errors: %v", e)
	}

	// The server goes away: the agent is degraded, and back when it returns.
	srv.Stop(t)
	waitMetrics(t, url, "degraded", all(
		equal("sigil_agent_connected", 0),
		equal("sigil_agent_state", 1, "state", "degraded"),
		atLeast("sigil_agent_degraded_since_seconds", 1),
	))
	srv.Start(t)
	waitMetrics(t, url, "connected again", all(
		equal("sigil_agent_state", 1, "state", "connected"),
		equal("sigil_agent_degraded_since_seconds", 0),
	))
}
