package agent

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/sigil-spiffe/sigil/internal/agent/manager"
	"github.com/sigil-spiffe/sigil/internal/telemetry"
	"github.com/sigil-spiffe/sigil/internal/telemetry/telemetrytest"
)

// scrape serves the status gauges of st through a registry's handler and
// parses the answer with the Prometheus text parser, returning sample
// values by name{labels}.
func scrape(t *testing.T, st manager.Status) map[string]float64 {
	t.Helper()
	reg := telemetry.NewRegistry(telemetry.AgentPrefix)
	registerStatusMetrics(reg, func() manager.Status { return st })
	rr := httptest.NewRecorder()
	reg.Handler().ServeHTTP(rr, httptest.NewRequest(http.MethodGet, MetricsPath, nil))
	if rr.Code != http.StatusOK {
		t.Fatalf("GET %s: %d", MetricsPath, rr.Code)
	}
	if ct := rr.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Fatalf("Content-Type %q", ct)
	}
	fams, err := telemetrytest.Parse(rr.Body.String())
	if err != nil {
		t.Fatalf("%v\n%s", err, rr.Body.String())
	}
	out := map[string]float64{}
	for name, f := range fams {
		if !strings.HasPrefix(name, telemetry.AgentPrefix) {
			continue // go_*, process_*
		}
		if f.GetType() != dto.MetricType_GAUGE || f.GetHelp() == "" {
			t.Fatalf("%s: type %s, help %q", name, f.GetType(), f.GetHelp())
		}
		for _, m := range f.GetMetric() {
			key := name
			if ls := m.GetLabel(); len(ls) > 0 {
				key += "{" + ls[0].GetName() + "=" + strconv.Quote(ls[0].GetValue()) + "}"
			}
			out[key] = m.GetGauge().GetValue()
		}
	}
	return out
}

func TestMetricsByState(t *testing.T) {
	since := time.Unix(1750000000, 0)
	expiry := since.Add(7*24*time.Hour + 1500*time.Millisecond)
	sync := since.Add(-time.Minute)
	cases := []struct {
		st   manager.Status
		want map[string]float64
	}{
		{manager.Status{State: manager.StateConnected, Connected: true, SVIDs: 3, EarliestSVIDExpiry: expiry, LastSync: sync}, map[string]float64{
			"sigil_agent_connected": 1, `sigil_agent_state{state="connected"}`: 1, `sigil_agent_state{state="degraded"}`: 0, `sigil_agent_state{state="expired"}`: 0, `sigil_agent_state{state="revoked"}`: 0,
			"sigil_agent_degraded_since_seconds": 0, "sigil_agent_earliest_svid_expiry_seconds": float64(expiry.UnixMilli()) / 1000,
			"sigil_agent_svids": 3, "sigil_agent_last_sync_timestamp_seconds": float64(sync.Unix()), "sigil_agent_agent_svid_expiry_seconds": 0, "sigil_agent_jwt_svids": 0, "sigil_agent_jwt_svids_served_until_seconds": 0,
		}},
		{manager.Status{State: manager.StateDegraded, DegradedSince: since, SVIDs: 1, EarliestSVIDExpiry: expiry, LastSync: sync, AgentSVIDExpiresAt: expiry,
			JWTSVIDs: 2, JWTSVIDsServedUntil: sync}, map[string]float64{
			"sigil_agent_connected": 0, `sigil_agent_state{state="connected"}`: 0, `sigil_agent_state{state="degraded"}`: 1, `sigil_agent_state{state="expired"}`: 0, `sigil_agent_state{state="revoked"}`: 0,
			"sigil_agent_degraded_since_seconds": float64(since.Unix()), "sigil_agent_earliest_svid_expiry_seconds": float64(expiry.UnixMilli()) / 1000,
			"sigil_agent_svids": 1, "sigil_agent_last_sync_timestamp_seconds": float64(sync.Unix()), "sigil_agent_agent_svid_expiry_seconds": float64(expiry.UnixMilli()) / 1000, "sigil_agent_jwt_svids": 2, "sigil_agent_jwt_svids_served_until_seconds": float64(sync.Unix()),
		}},
		{manager.Status{State: manager.StateExpired, DegradedSince: since}, map[string]float64{
			"sigil_agent_connected": 0, `sigil_agent_state{state="connected"}`: 0, `sigil_agent_state{state="degraded"}`: 0, `sigil_agent_state{state="expired"}`: 1, `sigil_agent_state{state="revoked"}`: 0,
			"sigil_agent_degraded_since_seconds": float64(since.Unix()), "sigil_agent_earliest_svid_expiry_seconds": 0,
			"sigil_agent_svids": 0, "sigil_agent_last_sync_timestamp_seconds": 0, "sigil_agent_agent_svid_expiry_seconds": 0, "sigil_agent_jwt_svids": 0, "sigil_agent_jwt_svids_served_until_seconds": 0,
		}},
		{manager.Status{State: manager.StateRevoked, DegradedSince: since, RevokedAt: since, RevokedReason: "AGENT_BANNED", Banned: true, LastSync: sync}, map[string]float64{
			"sigil_agent_connected": 0, `sigil_agent_state{state="connected"}`: 0, `sigil_agent_state{state="degraded"}`: 0, `sigil_agent_state{state="expired"}`: 0, `sigil_agent_state{state="revoked"}`: 1,
			"sigil_agent_degraded_since_seconds": float64(since.Unix()), "sigil_agent_earliest_svid_expiry_seconds": 0,
			"sigil_agent_svids": 0, "sigil_agent_last_sync_timestamp_seconds": float64(sync.Unix()), "sigil_agent_agent_svid_expiry_seconds": 0, "sigil_agent_jwt_svids": 0, "sigil_agent_jwt_svids_served_until_seconds": 0,
		}},
	}
	for _, tc := range cases {
		t.Run(string(tc.st.State), func(t *testing.T) {
			got := scrape(t, tc.st)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d samples, want %d: %v", len(got), len(tc.want), got)
			}
			for k, v := range tc.want {
				if g, ok := got[k]; !ok || g != v {
					t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
				}
			}
		})
	}
}

func TestReadiness(t *testing.T) {
	now := time.Unix(1750000000, 0)
	since := now.Add(-time.Hour)
	expiry := now.Add(48 * time.Hour)
	ok, detail := readiness(manager.Status{State: manager.StateConnected, Connected: true}, now)
	if !ok || detail != "connected" {
		t.Fatalf("connected: %v %q", ok, detail)
	}
	ok, detail = readiness(manager.Status{State: manager.StateDegraded, DegradedSince: since, SVIDs: 2, EarliestSVIDExpiry: expiry, LastError: "connection refused"}, now)
	if !ok || !strings.HasPrefix(detail, "degraded:") || !strings.Contains(detail, since.UTC().Format(time.RFC3339)) ||
		!strings.Contains(detail, expiry.UTC().Format(time.RFC3339)) || !strings.Contains(detail, "48h0m0s") || !strings.Contains(detail, "connection refused") {
		t.Fatalf("degraded: %v %q", ok, detail)
	}
	if !strings.Contains(detail, "no cached JWT-SVID") {
		t.Fatalf("degraded without JWT-SVIDs: %q", detail)
	}
	// The JWT-SVIDs a degraded agent still serves, and until when.
	jwtUntil := now.Add(4 * time.Minute)
	_, detail = readiness(manager.Status{State: manager.StateDegraded, DegradedSince: since, SVIDs: 2, EarliestSVIDExpiry: expiry,
		JWTSVIDs: 3, JWTSVIDsServedUntil: jwtUntil}, now)
	if !strings.Contains(detail, "serving 3 cached JWT-SVIDs for their audiences only, the first until "+jwtUntil.UTC().Format(time.RFC3339)+" (4m0s); other audiences refused") {
		t.Fatalf("degraded with JWT-SVIDs: %q", detail)
	}
	ok, detail = readiness(manager.Status{State: manager.StateExpired, DegradedSince: since}, now)
	if ok || !strings.HasPrefix(detail, "expired:") || !strings.Contains(detail, "; server unreachable since ") {
		t.Fatalf("expired: %v %q", ok, detail)
	}
	// A plugin failing on this host is named instead of the server.
	const local = `NodeAttestor "x509pop" failing on this host (not the server) since `
	ok, detail = readiness(manager.Status{State: manager.StateDegraded, DegradedSince: since, SVIDs: 2, EarliestSVIDExpiry: expiry,
		FailedPlugin: `NodeAttestor "x509pop"`, LastError: "read /etc/device.crt: no such file or directory"}, now)
	if !ok || !strings.HasPrefix(detail, "degraded: "+local+since.UTC().Format(time.RFC3339)) || strings.Contains(detail, "server unreachable") {
		t.Fatalf("degraded, local: %v %q", ok, detail)
	}
	ok, detail = readiness(manager.Status{State: manager.StateExpired, DegradedSince: since, FailedPlugin: `NodeAttestor "x509pop"`}, now)
	if ok || !strings.HasPrefix(detail, "expired: no valid SVID left to serve; "+local) || strings.Contains(detail, "server unreachable") {
		t.Fatalf("expired, local: %v %q", ok, detail)
	}
	ok, detail = readiness(manager.Status{State: manager.StateRevoked, RevokedAt: since, RevokedReason: "AGENT_NOT_ATTESTED",
		LastError: `the server refused the agent (AGENT_NOT_ATTESTED): agent "x" is not attested`}, now)
	if ok || !strings.HasPrefix(detail, "revoked:") || !strings.Contains(detail, "evicted, AGENT_NOT_ATTESTED") ||
		!strings.Contains(detail, since.UTC().Format(time.RFC3339)) || !strings.Contains(detail, "is not attested") {
		t.Fatalf("revoked: %v %q", ok, detail)
	}
	ok, detail = readiness(manager.Status{State: manager.StateRevoked, RevokedAt: since, RevokedReason: "ATTESTATION_REFUSED",
		LastError: "the server refused the agent (ATTESTATION_REFUSED): certificate revoked"}, now)
	if ok || !strings.Contains(detail, "(attestation refused, ATTESTATION_REFUSED)") || strings.Contains(detail, "evicted") {
		t.Fatalf("revoked after a refused re-attestation: %v %q", ok, detail)
	}
}
