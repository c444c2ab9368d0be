// Package offline tests a long outage end to end, in process: a real
// server and agent share one fake clock, the server goes away for more
// than a week of fake time, the agent is restarted in the middle, and a
// go-spiffe workload keeps fetching its SVID until the SVID's NotAfter,
// after which it gets none. Real run time is a few seconds.
package offline_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/adminclient"
	"github.com/sigil-spiffe/sigil/internal/agent/manager"
	agentapp "github.com/sigil-spiffe/sigil/internal/app/agent"
	serverapp "github.com/sigil-spiffe/sigil/internal/app/server"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/telemetry/telemetrytest"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/inproc"
)

const (
	day = 24 * time.Hour
	// svidTTL is the entries' X509-SVID TTL; target the availability
	// target: SVIDs are renewed once less than 7 of their 8 days are left.
	svidTTL = 8 * day
	target  = 7 * day
	// wait bounds every real-time wait; nothing asserts on timing.
	wait = 30 * time.Second
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func TestWeekLongOutage(t *testing.T) {
	// The fake clock starts two days in the past: the agent's TLS client
	// checks the server certificate against the real clock, so everything
	// signed while the server is up (at most a day later in fake time)
	// must be valid now in real time too.
	clk := clock.NewFake(time.Now().Add(-2 * day).Truncate(time.Second))
	dir := testutil.ShortTempDir(t)
	uid := os.Getuid()

	// Server: SVIDs (server, agent, workloads) live 8 days, the CA 90.
	srv := startServer(t, dir, clk)
	agentID := spiffeid.RequireFromPath(td, "/agent/edge")
	workloadID := spiffeid.RequireFromPath(td, "/workload/edge")
	adm := srv.Admin(t)
	token := adm.CreateJoinToken(t, agentID)
	e, err := adminclient.NewEntry(workloadID, agentID, fmt.Sprintf("unix:uid:%d", uid))
	if err != nil {
		t.Fatal(err)
	}
	e.X509SvidTtl = int32(svidTTL / time.Second)
	adm.CreateEntries(t, e)

	acfg := agentConfig(t, dir, srv, token)
	logs := &logRecorder{}
	a := startAgent(t, acfg, clk, logs)
	socket := "unix://" + acfg.SocketPath

	// Connected: the workload gets an 8-day SVID.
	first := fetchEventually(t, socket, func(s *x509svid.SVID) bool { return s.ID == workloadID })
	if life := first.Certificates[0].NotAfter.Sub(first.Certificates[0].NotBefore); life < svidTTL-time.Minute {
		t.Fatalf("workload SVID lives %s, want %s", life, svidTTL)
	}
	waitFor(t, "connected state", func() bool { return a.Status().State == manager.StateConnected })
	expectReady(t, acfg, http.StatusOK, "connected")

	// availability_target: a day in, 7 days are left and both SVIDs are
	// renewed (half-life renewal would wait until about day 4).
	firstAgentSVID := a.Status().AgentSVIDExpiresAt
	clk.Add(day + time.Hour)
	renewed := fetchEventually(t, socket, func(s *x509svid.SVID) bool {
		return s.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0
	})
	leaf := renewed.Certificates[0]
	if left := leaf.NotAfter.Sub(clk.Now()); left < target {
		t.Fatalf("renewed SVID has %s left, want at least %s", left, target)
	}
	waitFor(t, "renewed agent SVID", func() bool { return a.Status().AgentSVIDExpiresAt.After(firstAgentSVID) })
	waitFor(t, "connected after renewals", func() bool { return a.Status().State == manager.StateConnected })

	// The server goes away.
	srv.StopT(t)
	outage := clk.Now()
	waitFor(t, "degraded state", func() bool { return a.Status().State == manager.StateDegraded })
	expectReady(t, acfg, http.StatusOK, "degraded: server unreachable since")
	m := scrapeMetrics(t, acfg)
	wantMetric(t, m, "sigil_agent_state", 1, "state", "degraded")
	wantMetric(t, m, "sigil_agent_connected", 0)
	// Two SVIDs: the workload's, and that of /agent/edge, which join
	// token attestation made a node alias entry (as in SPIRE).
	wantMetric(t, m, "sigil_agent_svids", 2)
	st := a.Status()
	if e := st.EarliestSVIDExpiry; e.After(leaf.NotAfter) || leaf.NotAfter.Sub(e) > time.Minute {
		t.Fatalf("earliest SVID expiry %s, want (about) the workload SVID's %s", e, leaf.NotAfter)
	}
	wantMetric(t, m, "sigil_agent_earliest_svid_expiry_seconds", float64(st.EarliestSVIDExpiry.UnixMilli())/1000)
	wantMetric(t, m, "sigil_agent_degraded_since_seconds", float64(st.DegradedSince.UnixMilli())/1000)
	waitFor(t, "degraded warning", func() bool { return logs.count(slog.LevelWarn, "Agent state: degraded") == 1 })

	// Half a day at a time, the workload keeps getting its SVID...
	step := 12 * time.Hour
	for clk.Now().Sub(outage) < 3*day {
		clk.Add(step)
		expectSVID(t, socket, leaf)
	}

	// ...across an agent restart with the server still down...
	a.stop(t)
	a = startAgent(t, acfg, clk, logs)
	expectSVID(t, socket, leaf)
	waitFor(t, "degraded after restart", func() bool {
		st := a.Status()
		return st.State == manager.StateDegraded && !st.LastErrorAt.IsZero()
	})
	for clk.Now().Add(step).Before(leaf.NotAfter) {
		clk.Add(step)
		expectSVID(t, socket, leaf)
	}
	if d := clk.Now().Sub(outage); d < 7*day {
		t.Fatalf("outage covered %s of fake time, want at least 7 days", d)
	}
	clk.Set(leaf.NotAfter.Add(-time.Second))
	expectSVID(t, socket, leaf)
	expectReady(t, acfg, http.StatusOK, "degraded")
	if n := logs.count(slog.LevelWarn, "still degraded"); n == 0 {
		t.Error("no degraded reminder over a week of outage")
	}

	// ...until the SVID's NotAfter: an open stream learns it has nothing
	// left, and new calls get no SVID (never an expired certificate).
	stream, opened := testutil.OpenX509Stream(t, acfg.SocketPath, wait)
	if len(opened.Svids) != 1 {
		t.Fatalf("stream before expiry: %d SVIDs", len(opened.GetSvids()))
	}
	clk.Set(leaf.NotAfter)
	resp, err := stream.Recv()
	if code := status.Code(err); code != codes.Unavailable && code != codes.PermissionDenied {
		t.Fatalf("open stream at NotAfter: %d SVIDs, error %v; want Unavailable or PermissionDenied", len(resp.GetSvids()), err)
	}
	expectNoSVID(t, socket, clk)
	waitFor(t, "expired state", func() bool { return a.Status().State == manager.StateExpired })
	expectReady(t, acfg, http.StatusServiceUnavailable, "expired")
	m = scrapeMetrics(t, acfg)
	wantMetric(t, m, "sigil_agent_state", 1, "state", "expired")
	wantMetric(t, m, "sigil_agent_state", 0, "state", "degraded")
	wantMetric(t, m, "sigil_agent_svids", 0)
	wantMetric(t, m, "sigil_agent_earliest_svid_expiry_seconds", 0)
	waitFor(t, "expired error", func() bool { return logs.count(slog.LevelError, "Agent state: expired") == 1 })
}

// startServer runs an in-process sigil-server whose SVIDs (server, agent,
// workloads) live 8 days and its CA 90, on clk.
func startServer(t *testing.T, dir string, clk clock.Clock) *inproc.Server {
	t.Helper()
	cfg := inproc.ServerConfig(td, filepath.Join(dir, "server"), filepath.Join(dir, "admin.sock"), 0)
	cfg.CATTL = 90 * day
	cfg.DefaultX509SVIDTTL = svidTTL
	cfg.AgentTTL = svidTTL
	return inproc.RunServer(t, cfg, nil, serverapp.Options{Clock: clk})
}

func agentConfig(t *testing.T, dir string, srv *inproc.Server, token string) *config.Agent {
	t.Helper()
	cfg := srv.AgentConfig(t, filepath.Join(dir, "agent"), token)
	cfg.AvailabilityTarget = target
	port, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg.HealthChecks = config.HealthChecks{ListenerEnabled: true, BindAddress: "127.0.0.1", BindPort: port, LivePath: "/live", ReadyPath: "/ready"}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("agent configuration: %v", err)
	}
	return cfg
}

// agent is an in-process sigil-agent.
type agent struct {
	*agentapp.Agent
	ia *inproc.Agent
}

func startAgent(t *testing.T, cfg *config.Agent, clk clock.Clock, logs *logRecorder) *agent {
	t.Helper()
	a := inproc.RunAgent(t, cfg, slog.New(logs), agentapp.Options{Clock: clk})
	ag := &agent{Agent: a.A, ia: a}
	// The health listener starts alongside the Workload API.
	waitFor(t, "health listener", func() bool {
		resp, err := http.Get(healthURL(cfg, "/live"))
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	return ag
}

func (a *agent) stop(t *testing.T) { a.ia.StopT(t) }

func fetch(socket string) (*x509svid.SVID, error) {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	return workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(socket))
}

func fetchEventually(t *testing.T, socket string, ok func(*x509svid.SVID) bool) *x509svid.SVID {
	t.Helper()
	var got *x509svid.SVID
	waitFor(t, "workload SVID", func() bool {
		s, err := fetch(socket)
		if err == nil && ok(s) {
			got = s
			return true
		}
		return false
	})
	return got
}

// expectSVID fetches once: it must succeed with exactly this certificate.
func expectSVID(t *testing.T, socket string, want *x509.Certificate) {
	t.Helper()
	s, err := fetch(socket)
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	if !s.Certificates[0].Equal(want) {
		t.Fatalf("fetched serial %v, want %v", s.Certificates[0].SerialNumber, want.SerialNumber)
	}
}

// expectNoSVID fetches once with nothing valid to serve: the Workload API
// waits (on the fake clock) for an SVID to be issued, so the clock is
// moved on until the call gives up. It must fail without a certificate.
func expectNoSVID(t *testing.T, socket string, clk *clock.Fake) {
	t.Helper()
	type result struct {
		s   *x509svid.SVID
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := fetch(socket)
		ch <- result{s, err}
	}()
	deadline := time.After(wait)
	for {
		select {
		case r := <-ch:
			if r.err == nil {
				t.Fatalf("workload got an SVID (serial %v, NotAfter %s) at %s", r.s.Certificates[0].SerialNumber, r.s.Certificates[0].NotAfter, clk.Now())
			}
			if code := status.Code(r.err); code != codes.Unavailable && code != codes.PermissionDenied {
				t.Fatalf("fetch after expiry: %v; want Unavailable or PermissionDenied", r.err)
			}
			return
		case <-time.After(20 * time.Millisecond):
			clk.Add(5 * time.Second)
		case <-deadline:
			t.Fatal("fetch after expiry did not return")
		}
	}
}

func healthURL(cfg *config.Agent, path string) string {
	return "http://" + net.JoinHostPort(cfg.HealthChecks.BindAddress, strconv.Itoa(cfg.HealthChecks.BindPort)) + path
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

func expectReady(t *testing.T, cfg *config.Agent, code int, prefix string) {
	t.Helper()
	got, body := get(t, healthURL(cfg, cfg.HealthChecks.ReadyPath))
	if got != code || !strings.HasPrefix(body, prefix) {
		t.Fatalf("ready probe: %d %q; want %d %q...", got, body, code, prefix)
	}
}

// scrapeMetrics scrapes the health listener's /metrics with the
// Prometheus text parser.
func scrapeMetrics(t *testing.T, cfg *config.Agent) telemetrytest.Samples {
	t.Helper()
	m, err := telemetrytest.Scrape(healthURL(cfg, agentapp.MetricsPath))
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	return m
}

// wantMetric checks the value of the sample of name with labels (name,
// value pairs).
func wantMetric(t *testing.T, m telemetrytest.Samples, name string, want float64, labels ...string) {
	t.Helper()
	if got, ok := m.Value(name, labels...); !ok || got != want {
		t.Errorf("metric %s%v = %v (present %v), want %v", name, labels, got, ok, want)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// logRecorder is a slog.Handler keeping level and message of every record.
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec.Clone())
	return nil
}
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }

func (r *logRecorder) count(level slog.Level, msg string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, rec := range r.recs {
		if rec.Level == level && strings.Contains(rec.Message, msg) {
			n++
		}
	}
	return n
}
