package manager

import (
	"context"

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
