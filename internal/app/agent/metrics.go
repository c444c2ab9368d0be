package agent

import (
	"fmt"
	"time"

	"github.com/sigil-spiffe/sigil/internal/agent/client"
	"github.com/sigil-spiffe/sigil/internal/agent/manager"
	"github.com/sigil-spiffe/sigil/internal/telemetry"
)

// MetricsPath is where the health listener serves the agent's metrics
// (the same registry as the telemetry Prometheus exporter).
const MetricsPath = "/metrics"

// agentStates are the values of sigil_agent_state's state label.
var agentStates = []manager.State{manager.StateConnected, manager.StateDegraded, manager.StateExpired, manager.StateRevoked}

// registerStatusMetrics registers the agent state gauges, computed from one
// status snapshot per scrape. Timestamps are Unix seconds; 0 means "none"
// (not degraded, no SVID, never synced).
func registerStatusMetrics(reg *telemetry.Registry, status func() manager.Status) {
	reg.GaugeSet([]telemetry.Desc{
		{Name: "sigil_agent_connected", Help: "1 while a session with the server is established, else 0."},
		{Name: "sigil_agent_state", Help: "1 for the agent's current state: connected, degraded (serving cached SVIDs, server unreachable), expired (nothing valid left to serve) or revoked (the server refused the agent: banned, evicted or its re-attestation refused; serving nothing).", Labels: []string{"state"}},
		{Name: "sigil_agent_degraded_since_seconds", Help: "Unix time since when the server has been unreachable; 0 while connected."},
		{Name: "sigil_agent_earliest_svid_expiry_seconds", Help: "Unix time at which the first served workload X509-SVID expires; 0 when none is served."},
		{Name: "sigil_agent_svids", Help: "Number of unexpired workload X509-SVIDs the agent serves."},
		{Name: "sigil_agent_last_sync_timestamp_seconds", Help: "Unix time of the last completed sync with the server; 0 if none since start."},
		{Name: "sigil_agent_agent_svid_expiry_seconds", Help: "Unix time at which the agent's own SVID expires; 0 before attestation."},
		{Name: "sigil_agent_jwt_svids", Help: "Number of cached JWT-SVIDs the agent can serve without its server (each for the SPIFFE ID and audience set it was minted for)."},
		{Name: "sigil_agent_jwt_svids_served_until_seconds", Help: "Unix time until which the first of those JWT-SVIDs is served without the server (shortly before its exp); 0 when there are none."},
		{Name: "sigil_agent_federated_bundle_updated_timestamp_seconds", Help: "Unix time at which each federated trust domain's bundle the agent serves was last known current: when the server last fetched it from that trust domain's bundle endpoint (as sigil-server reports it), else when the agent received its current content; 0 when unknown. Kept across restarts: while the agent, its server or the peer are cut off, time() minus this is the age of the bundle workloads are served.", Labels: []string{"trust_domain"}},
	}, func() map[string][]telemetry.Sample {
		st := status()
		b := func(v bool) float64 {
			if v {
				return 1
			}
			return 0
		}
		one := func(v float64) []telemetry.Sample { return []telemetry.Sample{{Value: v}} }
		states := make([]telemetry.Sample, 0, len(agentStates))
		for _, s := range agentStates {
			states = append(states, telemetry.Sample{Labels: []string{string(s)}, Value: b(st.State == s)})
		}
		fed := make([]telemetry.Sample, 0, len(st.FederatedBundles))
		for _, u := range st.FederatedBundles {
			fed = append(fed, telemetry.Sample{Labels: []string{u.TrustDomain.Name()}, Value: telemetry.UnixSeconds(u.UpdatedAt)})
		}
		return map[string][]telemetry.Sample{
			"sigil_agent_federated_bundle_updated_timestamp_seconds": fed,
			"sigil_agent_connected":                                  one(b(st.Connected)),
			"sigil_agent_state":                                      states,
			"sigil_agent_degraded_since_seconds":                     one(telemetry.UnixSeconds(st.DegradedSince)),
			"sigil_agent_earliest_svid_expiry_seconds":               one(telemetry.UnixSeconds(st.EarliestSVIDExpiry)),
			"sigil_agent_svids":                                      one(float64(st.SVIDs)),
			"sigil_agent_jwt_svids":                                  one(float64(st.JWTSVIDs)),
			"sigil_agent_jwt_svids_served_until_seconds":             one(telemetry.UnixSeconds(st.JWTSVIDsServedUntil)),
			"sigil_agent_last_sync_timestamp_seconds":                one(telemetry.UnixSeconds(st.LastSync)),
			"sigil_agent_agent_svid_expiry_seconds":                  one(telemetry.UnixSeconds(st.AgentSVIDExpiresAt)),
		}
	})
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
		fed := ""
		if t := st.FederatedBundlesText(now); t != "" {
			fed = "; federated bundles: " + t
		}
		return true, fmt.Sprintf("degraded: %s since %s; serving %d cached SVIDs, earliest expiry %s (%s); %s%s; last error: %s",
			cause(st), st.DegradedSince.UTC().Format(time.RFC3339), st.SVIDs, st.EarliestSVIDExpiry.UTC().Format(time.RFC3339),
			st.EarliestSVIDExpiry.Sub(now).Round(time.Second), offlineJWTs(st, now), fed, st.LastError)
	default:
		return false, fmt.Sprintf("expired: no valid SVID left to serve; %s since %s; last error: %s",
			cause(st), st.DegradedSince.UTC().Format(time.RFC3339), st.LastError)
	}
}

// cause says why a degraded or expired agent is not connected: its server,
// or a plugin failing on this host.
func cause(st manager.Status) string {
	if st.FailedPlugin != "" {
		return st.FailedPlugin + " failing on this host (not the server)"
	}
	return "server unreachable"
}

// offlineJWTs says which JWT-SVIDs a degraded agent serves: only cached
// ones, for the audiences they were minted for.
func offlineJWTs(st manager.Status, now time.Time) string {
	if st.JWTSVIDs == 0 {
		return "no cached JWT-SVID (JWT-SVIDs refused until the server is back)"
	}
	return fmt.Sprintf("serving %d cached JWT-SVIDs for their audiences only, the first until %s (%s); other audiences refused",
		st.JWTSVIDs, st.JWTSVIDsServedUntil.UTC().Format(time.RFC3339), st.JWTSVIDsServedUntil.Sub(now).Round(time.Second))
}
