package manager

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sigil-spiffe/sigil/internal/agent/client"
)

// errRevoked: the server revoked the agent and it has no way to attest
// again in this process (banned, or no unused single-use credential).
var errRevoked = errors.New("the server revoked the agent's SVID and the agent cannot attest again")

// errTokenUsed: no usable agent SVID, and the single-use credential (join
// token) is known to be spent.
var errTokenUsed = errors.New("no usable agent SVID, and the configured join token has already been used or was refused by the server")

// revocation ends a session whose re-attestation the server refused: the
// node no longer proves its identity, which Run revokes.
type revocation struct{ r client.Refusal }

func (e *revocation) Error() string {
	return fmt.Sprintf("the server refused the node's attestation: %s", e.r.Message)
}

// fatalError ends Run: the agent has never had an identity and the server
// refused the only credential it has.
type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }
func (e *fatalError) Unwrap() error { return e.err }

// keyDeleter is implemented by key managers that can delete a key
// (keys.Disk, keys.Memory); a revoked agent deletes its SVID keys with it.
type keyDeleter interface {
	DeleteKey(ctx context.Context, id string) error
}

// revoke acts on the server's refusal of the agent's SVID: the state
// becomes revoked (readiness and metrics say so at once), the cache drops
// every workload identity (Workload API streams end, filesystem delivery
// removes its files) and deletes its file, and the persisted agent SVID and
// its keys are deleted. Run then attests again if it can (see
// ensureIdentity) or stops trying.
func (m *Manager) revoke(ctx context.Context, r client.Refusal) {
	now := m.clk.Now()
	m.mu.Lock()
	agentID := m.id.agentID()
	switch {
	case m.id != nil && len(m.id.bundle) > 0:
		m.lastBundle = m.id.bundle
	default:
		if b, ok := m.cache.Bundle(m.cfg.TrustDomain); ok && len(b.X509Authorities()) > 0 {
			m.lastBundle = b.X509Authorities()
		}
	}
	m.id = nil
	m.bannedWhileRunning = r.Kind == client.Banned && m.sessionOK
	if m.status.Connected || m.status.DegradedSince.IsZero() {
		m.status.DegradedSince = now
	}
	m.status.Connected = false
	m.status.WatchMode = false
	m.status.RevokedAt = now
	m.status.RevokedReason = r.Reason
	m.status.Banned = r.Kind == client.Banned
	m.status.AgentSVIDExpiresAt = time.Time{}
	m.status.LastError = fmt.Sprintf("the server refused the agent (%s): %s", r.Reason, r.Message)
	m.status.LastErrorAt = now
	m.attempted = true
	m.notifyStatus()
	m.mu.Unlock()

	// The agent's own state goes first, so that by the time a workload
	// sees its identity gone, nothing of it is left on disk.
	var errs []error
	if err := deleteState(m.cfg.DataDir); err != nil {
		errs = append(errs, fmt.Errorf("delete the persisted agent SVID: %w", err))
	}
	if kd, ok := m.cfg.Keys.(keyDeleter); ok {
		for _, k := range []string{agentKeyA, agentKeyB} {
			if err := kd.DeleteKey(ctx, k); err != nil {
				errs = append(errs, fmt.Errorf("delete the agent SVID key: %w", err))
			}
		}
	}
	if err := m.cache.Revoke(); err != nil {
		errs = append(errs, err)
	}
	m.log.Error("The server refused this agent: it serves no identity any more and deleted its persisted agent SVID and workload cache",
		"agent_id", agentID.String(), "reason", r.Reason, "error", r.Message, "next", m.recoveryHint())
	if err := errors.Join(errs...); err != nil {
		m.log.Error("Failed to delete part of the revoked agent's persisted state", "dir", m.cfg.DataDir, "error", err)
	}
}

// canAttestAgain reports whether ensureIdentity may attest after a
// revocation: never when banned while running; with an attestor that can
// repeat its proof, always; with a single-use one (join token), only with
// an unused credential.
func (m *Manager) canAttestAgain() bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return !m.bannedWhileRunning && m.hasCredential() && !m.spent
}

// hasCredential reports whether the attestor has something to present: a
// single-use attestor may have none (no join token configured).
func (m *Manager) hasCredential() bool {
	if m.single == nil {
		return true
	}
	_, ok := m.single.Credential(m.cfg.TrustDomain)
	return ok
}

// recoveryHint says what happens next after a revocation.
func (m *Manager) recoveryHint() string {
	m.mu.RLock()
	banned := m.status.Banned
	m.mu.RUnlock()
	switch {
	case m.canAttestAgain() && m.single == nil:
		return fmt.Sprintf("attesting again (NodeAttestor %q), and again with backoff while the server refuses", m.cfg.Attestor.Type())
	case m.canAttestAgain():
		return "attesting again with the configured join token"
	case banned && m.single == nil:
		return "banned: the agent does not attest again by itself; the banned agent ID can attest again only after `agent evict` deletes it, then restart the agent"
	case banned:
		return "banned: the agent does not attest again by itself; restart it with a new join token to bring the node back as a new agent (the banned agent ID can attest again only after `agent evict` deletes it)"
	default:
		return "restart the agent with a new join token (`token generate`) to attest again"
	}
}
