package endpoints_test

import (
	"context"
	"testing"
	"time"

	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	"google.golang.org/grpc/codes"

	"github.com/sigil-spiffe/sigil/internal/server/endpoints"
	"github.com/sigil-spiffe/sigil/internal/server/ratelimit"
	"github.com/sigil-spiffe/sigil/internal/telemetry"
	"github.com/sigil-spiffe/sigil/internal/telemetry/telemetrytest"
)

func scrapeReg(t *testing.T, reg *telemetry.Registry) telemetrytest.Samples {
	t.Helper()
	m, err := telemetrytest.ScrapeHandler(reg.Handler())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func wantSample(t *testing.T, m telemetrytest.Samples, want float64, name string, labels ...string) {
	t.Helper()
	if got := m.Get(name, labels...); got != want {
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

// The interceptors count every call by service, method and code, and
// attestations by attestor and result; a held failure and an open sync
// stream show.
func TestEndpointsMetrics(t *testing.T) {
	reg := telemetry.NewRegistry(telemetry.ServerPrefix)
	m := telemetry.NewServer(reg)
	m.SetAttestors([]string{"join_token"})
	h := newHarness(t, harnessOpts{
		endpoints: endpoints.Config{Metrics: m},
		rateLimit: ratelimit.Config{Attestation: true, Signing: true, FailureBurst: 1, FailureRate: 1},
	})
	conn := h.anonConn(fromIP("127.0.0.1"))
	key := newKey(t)

	token := h.createToken(&agentv1.CreateJoinTokenRequest{})
	if _, err := h.attest(conn, token, key); err != nil {
		t.Fatal(err)
	}
	_, err := h.attest(conn, token, key) // used
	requireCode(t, err, codes.InvalidArgument)
	_, err = attestWith(h.anonConn(fromIP("127.0.0.2")), "bogus-type", []byte("x"), csrFor(t, key), key)
	requireCode(t, err, codes.FailedPrecondition)
	// The source 127.0.0.1 has spent its burst: this failure is held
	// until the (fake) budget refills.
	held := make(chan error, 1)
	go func() { _, err := h.attest(conn, "guess", key); held <- err }()
	waitFor(t, "the held failure", func() bool { return scrapeReg(t, reg).Get("sigil_server_ratelimit_held_failures_total") == 1 })
	h.rlClk.Add(time.Second)
	requireCode(t, <-held, codes.InvalidArgument)

	s := scrapeReg(t, reg)
	const agentSvc = "spire.api.server.agent.v1.Agent"
	wantSample(t, s, 1, "sigil_server_rpcs_total", "service", agentSvc, "method", "CreateJoinToken", "code", "OK")
	wantSample(t, s, 1, "sigil_server_rpcs_total", "service", agentSvc, "method", "AttestAgent", "code", "OK")
	wantSample(t, s, 2, "sigil_server_rpcs_total", "service", agentSvc, "method", "AttestAgent", "code", "InvalidArgument")
	wantSample(t, s, 1, "sigil_server_rpcs_total", "service", agentSvc, "method", "AttestAgent", "code", "FailedPrecondition")
	wantSample(t, s, 4, "sigil_server_rpc_duration_seconds", "service", agentSvc, "method", "AttestAgent")
	wantSample(t, s, 1, "sigil_server_node_attestations_total", "attestor", "join_token", "result", "success")
	wantSample(t, s, 2, "sigil_server_node_attestations_total", "attestor", "join_token", "result", "failure")
	// A type that is not configured is counted, under "other" (agents
	// choose the type: the label stays bounded).
	wantSample(t, s, 1, "sigil_server_node_attestations_total", "attestor", "other", "result", "failure")
	if series := s.Series("sigil_server_node_attestations_total"); len(series) != 3 {
		t.Errorf("attestation series %v", series)
	}
	wantSample(t, s, 3, "sigil_server_node_attestation_duration_seconds", "attestor", "join_token")

	// A watch-mode sync stream is counted while open.
	svid := h.attestedAgent("metrics-agent")
	ctx, cancel := context.WithCancel(context.Background())
	openWatch(t, ctx, h.svidConn(svid), 1)
	wantSample(t, scrapeReg(t, reg), 1, "sigil_server_sync_streams")
	cancel()
	waitFor(t, "the stream's end", func() bool {
		s := scrapeReg(t, reg)
		return s.Get("sigil_server_rpcs_total", "method", "SyncAuthorizedEntries") == 1 && s.Get("sigil_server_sync_streams") == 0
	})
	// The agent went away: the stream ended without an error.
	wantSample(t, scrapeReg(t, reg), 1, "sigil_server_rpcs_total", "method", "SyncAuthorizedEntries", "code", "OK")
}
