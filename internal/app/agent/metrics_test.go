package agent

import (
	"bufio"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/agent/manager"
)

var sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*"\})? (\S+)$`)

// parseExposition checks the Prometheus text format (every sample's
// metric has HELP and TYPE lines before it) and returns sample values by
// name{labels}.
func parseExposition(t *testing.T, text string) map[string]float64 {
	t.Helper()
	typed := map[string]bool{}
	helped := map[string]bool{}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "# HELP "):
			f := strings.SplitN(strings.TrimPrefix(line, "# HELP "), " ", 2)
			if len(f) != 2 || f[1] == "" {
				t.Fatalf("bad HELP line %q", line)
			}
			helped[f[0]] = true
		case strings.HasPrefix(line, "# TYPE "):
			f := strings.Fields(strings.TrimPrefix(line, "# TYPE "))
			if len(f) != 2 || f[1] != "gauge" {
				t.Fatalf("bad TYPE line %q", line)
			}
			typed[f[0]] = true
		default:
			m := sampleLine.FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("malformed sample line %q", line)
			}
			if !typed[m[1]] || !helped[m[1]] {
				t.Fatalf("sample %q before its HELP/TYPE", line)
			}
			v, err := strconv.ParseFloat(m[3], 64)
			if err != nil {
				t.Fatalf("sample %q: %v", line, err)
			}
			key := m[1] + m[2]
			if _, dup := out[key]; dup {
				t.Fatalf("duplicate sample %s", key)
			}
			out[key] = v
		}
	}
	return out
}

func scrape(t *testing.T, st manager.Status) map[string]float64 {
	t.Helper()
	rr := httptest.NewRecorder()
	metricsHandler(func() manager.Status { return st }).ServeHTTP(rr, httptest.NewRequest(http.MethodGet, MetricsPath, nil))
	if rr.Code != http.StatusOK {
		t.Fatalf("GET %s: %d", MetricsPath, rr.Code)
	}
	if ct := rr.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Fatalf("Content-Type %q", ct)
	}
	return parseExposition(t, rr.Body.String())
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
			"sigil_agent_svids": 3, "sigil_agent_last_sync_timestamp_seconds": float64(sync.Unix()), "sigil_agent_agent_svid_expiry_seconds": 0,
		}},
		{manager.Status{State: manager.StateDegraded, DegradedSince: since, SVIDs: 1, EarliestSVIDExpiry: expiry, LastSync: sync, AgentSVIDExpiresAt: expiry}, map[string]float64{
			"sigil_agent_connected": 0, `sigil_agent_state{state="connected"}`: 0, `sigil_agent_state{state="degraded"}`: 1, `sigil_agent_state{state="expired"}`: 0, `sigil_agent_state{state="revoked"}`: 0,
			"sigil_agent_degraded_since_seconds": float64(since.Unix()), "sigil_agent_earliest_svid_expiry_seconds": float64(expiry.UnixMilli()) / 1000,
			"sigil_agent_svids": 1, "sigil_agent_last_sync_timestamp_seconds": float64(sync.Unix()), "sigil_agent_agent_svid_expiry_seconds": float64(expiry.UnixMilli()) / 1000,
		}},
		{manager.Status{State: manager.StateExpired, DegradedSince: since}, map[string]float64{
			"sigil_agent_connected": 0, `sigil_agent_state{state="connected"}`: 0, `sigil_agent_state{state="degraded"}`: 0, `sigil_agent_state{state="expired"}`: 1, `sigil_agent_state{state="revoked"}`: 0,
			"sigil_agent_degraded_since_seconds": float64(since.Unix()), "sigil_agent_earliest_svid_expiry_seconds": 0,
			"sigil_agent_svids": 0, "sigil_agent_last_sync_timestamp_seconds": 0, "sigil_agent_agent_svid_expiry_seconds": 0,
		}},
		{manager.Status{State: manager.StateRevoked, DegradedSince: since, RevokedAt: since, RevokedReason: "AGENT_BANNED", Banned: true, LastSync: sync}, map[string]float64{
			"sigil_agent_connected": 0, `sigil_agent_state{state="connected"}`: 0, `sigil_agent_state{state="degraded"}`: 0, `sigil_agent_state{state="expired"}`: 0, `sigil_agent_state{state="revoked"}`: 1,
			"sigil_agent_degraded_since_seconds": float64(since.Unix()), "sigil_agent_earliest_svid_expiry_seconds": 0,
			"sigil_agent_svids": 0, "sigil_agent_last_sync_timestamp_seconds": float64(sync.Unix()), "sigil_agent_agent_svid_expiry_seconds": 0,
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

func TestMetricsMethod(t *testing.T) {
	rr := httptest.NewRecorder()
	metricsHandler(func() manager.Status { return manager.Status{} }).ServeHTTP(rr, httptest.NewRequest(http.MethodPost, MetricsPath, nil))
	if rr.Code != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %d", rr.Code)
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
	ok, detail = readiness(manager.Status{State: manager.StateExpired, DegradedSince: since}, now)
	if ok || !strings.HasPrefix(detail, "expired:") {
		t.Fatalf("expired: %v %q", ok, detail)
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
