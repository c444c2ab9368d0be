// Package telemetry runs real sigil-server and sigil-agent processes with
// the telemetry Prometheus exporter and the audit log enabled, scrapes
// their metrics with the Prometheus text parser and reads their logs, and
// checks that each value moves with the action that should move it.
package telemetry

import (
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
