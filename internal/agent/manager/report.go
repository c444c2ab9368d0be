package manager

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
)

// reportState logs the agent's state: a warning when it becomes degraded
// (with since when and the earliest workload SVID expiry), an error when
// nothing valid is left to serve, a reminder every StateLogInterval while
// either lasts or the agent is revoked (revoke logs the revocation itself),
// and a line when the server is back. It returns when ctx is
// done.
func (m *Manager) reportState(ctx context.Context) {
	changes, stop := m.cache.Watch()
	defer stop()
	var (
		last       State  // last state logged; "" before the first
		lastPlugin string // and its FailedPlugin
		lastSince  time.Time
		lastLogged time.Time
		timer      <-chan time.Time
		timerAt    time.Time
	)
	for {
		now := m.clk.Now()
		st := m.Status()
		m.mu.RLock()
		attempted := m.attempted
		m.mu.RUnlock()
		if attempted {
			// A change of cause (the server, or a plugin of this host)
			// is logged like a change of state.
			causeChanged := st.FailedPlugin != lastPlugin && (st.State == StateDegraded || st.State == StateExpired)
			if st.State != last || causeChanged {
				m.logTransition(last, lastSince, st, now)
				last, lastPlugin, lastLogged = st.State, st.FailedPlugin, now
			} else if st.State != StateConnected && now.Sub(lastLogged) >= m.cfg.StateLogInterval {
				m.logReminder(st, now)
				lastLogged = now
			}
			lastSince = st.DegradedSince
		}

		// Wake at the earliest SVID expiry (degraded -> expired) and at
		// the next reminder; re-arm only when that instant changes.
		var next time.Time
		if st.State == StateDegraded {
			next = st.EarliestSVIDExpiry
		}
		if attempted && st.State != StateConnected {
			if r := lastLogged.Add(m.cfg.StateLogInterval); next.IsZero() || r.Before(next) {
				next = r
			}
		}
		if !next.Equal(timerAt) {
			timer, timerAt = nil, next
			if !next.IsZero() {
				timer = m.clk.After(next.Sub(now))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changes:
		case <-m.statusChanged:
		case <-timer:
			timer, timerAt = nil, time.Time{}
		}
	}
}

func (m *Manager) logTransition(from State, fromSince time.Time, st Status, now time.Time) {
	switch st.State {
	case StateConnected:
		if from == "" {
			return // "Connected to the server" is logged on connection
		}
		if from == StateRevoked {
			m.log.Info("Agent state: connected; attested again after the revocation", "state", st.State, "previous_state", from, "agent_id", st.AgentID.String())
			return
		}
		m.log.Info("Agent state: connected; the server is reachable again, no longer serving from cache only",
			"state", st.State, "previous_state", from, "degraded_for", now.Sub(fromSince).Round(time.Second))
	case StateDegraded:
		msg := "Agent state: degraded; the server is unreachable, serving cached SVIDs until they expire (JWT-SVIDs only for audiences already fetched)"
		if st.FailedPlugin != "" {
			msg = "Agent state: degraded; a plugin fails on this host (not the server), serving cached SVIDs until they expire (JWT-SVIDs only for audiences already fetched)"
		}
		m.log.Warn(msg,
			"state", st.State, pluginAttr(st), "degraded_since", st.DegradedSince, "earliest_svid_expiry", st.EarliestSVIDExpiry,
			"expires_in", st.EarliestSVIDExpiry.Sub(now).Round(time.Second), "svids", st.SVIDs, "jwt_svids", st.JWTSVIDs,
			"agent_svid_expires_at", st.AgentSVIDExpiresAt, fedAttr(st, now), "error", st.LastError)
	case StateExpired:
		msg := "Agent state: expired; no valid SVID is left to serve and the server is unreachable: workloads get no identity until it is back"
		if st.FailedPlugin != "" {
			msg = "Agent state: expired; no valid SVID is left to serve and a plugin fails on this host (not the server): workloads get no identity until it works again"
		}
		m.log.Error(msg,
			"state", st.State, pluginAttr(st), "degraded_since", st.DegradedSince, "agent_svid_expires_at", st.AgentSVIDExpiresAt, "error", st.LastError)
	case StateRevoked:
		// revoke logged the refusal, with its reason and what comes next.
	}
}

func (m *Manager) logReminder(st Status, now time.Time) {
	switch st.State {
	case StateDegraded:
		m.log.Warn("Agent state: still degraded, serving cached SVIDs",
			"state", st.State, pluginAttr(st), "degraded_since", st.DegradedSince, "degraded_for", now.Sub(st.DegradedSince).Round(time.Second),
			"earliest_svid_expiry", st.EarliestSVIDExpiry, "expires_in", st.EarliestSVIDExpiry.Sub(now).Round(time.Second),
			"svids", st.SVIDs, "jwt_svids", st.JWTSVIDs, fedAttr(st, now), "error", st.LastError)
	case StateExpired:
		m.log.Error("Agent state: still expired, no valid SVID to serve",
			"state", st.State, pluginAttr(st), "degraded_since", st.DegradedSince, "degraded_for", now.Sub(st.DegradedSince).Round(time.Second),
			"error", st.LastError)
	case StateRevoked:
		m.log.Error("Agent state: still revoked by the server, serving no identity",
			"state", st.State, "revoked_at", st.RevokedAt, "reason", st.RevokedReason, "error", st.LastError, "next", m.recoveryHint())
	}
}

// warnShortLived logs, once per entry (entryID "" is the agent SVID),
// that an SVID lives no longer than the availability target and is
// therefore renewed at half-life: the agent cannot ride out an outage that
// long with it.
func (m *Manager) warnShortLived(entryID string, id spiffeid.ID, notBefore, notAfter time.Time) {
	target := m.cfg.AvailabilityTarget
	if target <= 0 {
		return
	}
	short := cache.ShorterThanTarget(target, notBefore, notAfter)
	m.shortMu.Lock()
	_, warned := m.shortWarned[entryID]
	switch {
	case short && !warned:
		m.shortWarned[entryID] = struct{}{}
	case !short && warned:
		delete(m.shortWarned, entryID) // warn again if it becomes short again
	}
	m.shortMu.Unlock()
	if !short || warned {
		return
	}
	what, attrs := "An agent SVID", []any{}
	if entryID != "" {
		what, attrs = "A workload SVID", []any{"entry_id", entryID}
	}
	attrs = append(attrs, "spiffe_id", id.String(), "ttl", notAfter.Sub(notBefore).Round(time.Second), "availability_target", target)
	m.log.Warn(what+" lives no longer than availability_target: it is renewed at half-life and cannot cover an outage that long; raise its X509-SVID TTL", attrs...)
}

// forgetShortLived drops the warning state of entries not in keep.
func (m *Manager) forgetShortLived(keep map[string]struct{}) {
	m.shortMu.Lock()
	defer m.shortMu.Unlock()
	for k := range m.shortWarned {
		if _, ok := keep[k]; k != "" && !ok {
			delete(m.shortWarned, k)
		}
	}
}

// pluginAttr names the plugin of this host that fails (FailedPlugin) as a
// log attribute; an empty attribute (which slog leaves out) when the
// server is the cause.
func pluginAttr(st Status) slog.Attr {
	if st.FailedPlugin == "" {
		return slog.Attr{}
	}
	return slog.String("failed_plugin", st.FailedPlugin)
}

// fedAttr is the federated bundles' ages as a log attribute; an empty
// attribute (which slog leaves out) when there are none.
func fedAttr(st Status, now time.Time) slog.Attr {
	if len(st.FederatedBundles) == 0 {
		return slog.Attr{}
	}
	return slog.String("federated_bundles", st.FederatedBundlesText(now))
}

// FederatedBundlesText describes how old the federated bundles are at now,
// for status texts and logs: "edge.test updated 2026-12-03T10:00:00Z
// (72h0m0s ago), ..." ("update time unknown" when it is); "" when the
// agent serves no federated bundle.
func (st Status) FederatedBundlesText(now time.Time) string {
	var b strings.Builder
	for i, u := range st.FederatedBundles {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(u.TrustDomain.Name())
		if u.UpdatedAt.IsZero() {
			b.WriteString(" update time unknown")
			continue
		}
		fmt.Fprintf(&b, " updated %s (%s ago)", u.UpdatedAt.UTC().Format(time.RFC3339), now.Sub(u.UpdatedAt).Round(time.Second))
	}
	return b.String()
}
