package manager

import (
	"context"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
)

// NodeAttestor is the agent half of a node attestor (one package per
// attestor under internal/attest/node; the agent's catalog builds it from
// the configuration). The manager runs its sessions over agent/v1
// AttestAgent without knowing which attestor it is: the attestation data
// type and payload go first, then every server challenge goes to the
// session's Respond.
type NodeAttestor interface {
	// Type is the attestation data type, the plugin's name
	// ("join_token", "x509pop", "tpm").
	Type() string
	// Begin starts one attestation. The manager closes the session when
	// the exchange ends.
	Begin(ctx context.Context) (node.Session, error)
}

// SingleUseAttestor is a NodeAttestor whose credential attests once only
// (join_token): after the server accepted or refused it, presenting it
// again cannot succeed, so the manager does not, and an agent whose SVID
// is gone without an unused credential waits for a restart with a new
// one. Attestors that can repeat their proof (x509pop, tpm) do not
// implement it: they attest again whenever the agent needs an identity.
type SingleUseAttestor interface {
	NodeAttestor
	// Credential reports whether the attestor has a credential to present
	// and, when it can tell, the agent ID it attests as (zero otherwise):
	// a persisted SVID with that ID means the credential was used.
	Credential(td spiffeid.TrustDomain) (agentID spiffeid.ID, ok bool)
}

// localError is a failure on this host, not the server's: the node
// attestor could not start or answer an attestation (its device
// certificate is gone, its TPM unreachable) or the key manager could not
// make the agent key. The manager retries it like an unreachable server,
// but says which plugin failed (Status.FailedPlugin, the logs, the ready
// text).
type localError struct {
	// plugin is the plugin type and, when known, its name:
	// `NodeAttestor "x509pop"`, `KeyManager`.
	plugin string
	kind   string // NodeAttestor or KeyManager
	err    error
}

func (e *localError) Error() string { return e.plugin + " failed on this host: " + e.err.Error() }
func (e *localError) Unwrap() error { return e.err }

func attestorFailed(name string, err error) *localError {
	return &localError{plugin: fmt.Sprintf("NodeAttestor %q", name), kind: "NodeAttestor", err: err}
}

// localSession marks the failures of a session's answers as local ones,
// unless the exchange was cancelled (the server went away meanwhile).
type localSession struct {
	node.Session
	name string
}

func (s localSession) Respond(ctx context.Context, challenge []byte) ([]byte, error) {
	answer, err := s.Session.Respond(ctx, challenge)
	if err != nil && ctx.Err() == nil {
		return nil, attestorFailed(s.name, err)
	}
	return answer, err
}
