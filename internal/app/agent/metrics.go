package agent

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/sigil-spiffe/sigil/internal/agent/client"
	"github.com/sigil-spiffe/sigil/internal/agent/manager"
)

// MetricsPath is where the health listener serves the agent's metrics.
const MetricsPath = "/metrics"

// metricsHandler serves the agent state in the Prometheus text exposition
// format (version 0.0.4), written by hand: the agent stays free of a
// metrics library.
func metricsHandler(status func() manager.Status) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		if r.Method == http.MethodHead {
			return
		}
		_ = writeMetrics(w, status())
	})
}

// writeMetrics writes st as Prometheus gauges. Timestamps are Unix
// seconds; 0 means "none" (not degraded, no SVID, never synced).
func writeMetrics(w io.Writer, st manager.Status) error {
	bw := bufio.NewWriter(w)
	gauge := func(name, help string) {
		fmt.Fprintf(bw, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name)
	}
	b := func(v bool) int {
		if v {
			return 1
		}
		return 0
	}
	gauge("sigil_agent_connected", "1 while a session with the server is established, else 0.")
	fmt.Fprintf(bw, "sigil_agent_connected %d\n", b(st.Connected))
	gauge("sigil_agent_state", "1 for the agent's current state: connected, degraded (serving cached SVIDs, server unreachable), expired (nothing valid left to serve) or revoked (the server refused the agent: banned, evicted or its re-attestation refused; serving nothing).")
	for _, s := range []manager.State{manager.StateConnected, manager.StateDegraded, manager.StateExpired, manager.StateRevoked} {
		fmt.Fprintf(bw, "sigil_agent_state{state=%q} %d\n", string(s), b(st.State == s))
	}
	gauge("sigil_agent_degraded_since_seconds", "Unix time since when the server has been unreachable; 0 while connected.")
	fmt.Fprintf(bw, "sigil_agent_degraded_since_seconds %s\n", unixSeconds(st.DegradedSince))
	gauge("sigil_agent_earliest_svid_expiry_seconds", "Unix time at which the first served workload X509-SVID expires; 0 when none is served.")
	fmt.Fprintf(bw, "sigil_agent_earliest_svid_expiry_seconds %s\n", unixSeconds(st.EarliestSVIDExpiry))
	gauge("sigil_agent_svids", "Number of unexpired workload X509-SVIDs the agent serves.")
	fmt.Fprintf(bw, "sigil_agent_svids %d\n", st.SVIDs)
	gauge("sigil_agent_last_sync_timestamp_seconds", "Unix time of the last completed sync with the server; 0 if none since start.")
	fmt.Fprintf(bw, "sigil_agent_last_sync_timestamp_seconds %s\n", unixSeconds(st.LastSync))
	gauge("sigil_agent_agent_svid_expiry_seconds", "Unix time at which the agent's own SVID expires; 0 before attestation.")
	fmt.Fprintf(bw, "sigil_agent_agent_svid_expiry_seconds %s\n", unixSeconds(st.AgentSVIDExpiresAt))
	return bw.Flush()
}

// unixSeconds formats t as Unix seconds with millisecond precision, "0"
// for the zero time.
func unixSeconds(t time.Time) string {
	if t.IsZero() {
		return "0"
	}
	return fmt.Sprintf("%.3f", float64(t.UnixMilli())/1000)
}

// readiness is the ready probe: ready while the agent can serve (connected,
// or degraded with valid cached SVIDs), 503 once nothing valid is left or
// the server revoked the agent.
func readiness(st manager.Status, now time.Time) (bool, string) {
	switch st.State {
	case manager.StateRevoked:
		what := "evicted"
		switch {
		case st.Banned:
			what = "banned"
		case st.RevokedReason == client.ReasonAttestationRefused:
			what = "attestation refused"
		}
		return false, fmt.Sprintf("revoked: the server refused the agent (%s, %s) at %s; serving no identity; last error: %s",
			what, st.RevokedReason, st.RevokedAt.UTC().Format(time.RFC3339), st.LastError)
	case manager.StateConnected:
		return true, "connected"
	case manager.StateDegraded:
		return true, fmt.Sprintf("degraded: server unreachable since %s; serving %d cached SVIDs, earliest expiry %s (%s); last error: %s",
			st.DegradedSince.UTC().Format(time.RFC3339), st.SVIDs, st.EarliestSVIDExpiry.UTC().Format(time.RFC3339),
			st.EarliestSVIDExpiry.Sub(now).Round(time.Second), st.LastError)
	default:
		return false, fmt.Sprintf("expired: no valid SVID left to serve; server unreachable since %s; last error: %s",
			st.DegradedSince.UTC().Format(time.RFC3339), st.LastError)
	}
}
