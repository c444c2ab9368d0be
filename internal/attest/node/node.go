// Package node holds what node attestors share with the code that runs them:
// the result a server-side attestor establishes, the challenge/response
// exchange of agent/v1 AttestAgent as each side sees it, and the errors that
// tell a refusal from a failure.
//
// One package per attestor (internal/attest/node/<name>) holds both halves of
// its protocol: the server half verifies attestation data and asks the
// challenges; the agent half produces the data and answers them. Neither half
// knows gRPC: the server's agent API (internal/server/api/agent) and the
// agent's manager (internal/agent/manager) carry the bytes, and each declares
// the narrow interface it needs from an attestor, using the types here.
//
// The exchange, as in SPIRE's agent/v1 protocol:
//
//	agent                                      server
//	AttestationData{type, payload} + CSR  -->
//	                                      <--  challenge (0..n times)
//	response                              -->
//	                                      <--  result: agent SVID
//
// A server-side attestor sees it as one call, Attest(ctx, payload,
// challenge), where challenge sends bytes to the agent and returns its
// answer. An agent-side attestor sees it as a Session: the payload first,
// then one Respond per challenge.
package node

import (
	"context"
	"errors"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/selector"
)

// ChallengeFunc sends a challenge to the attesting agent and returns its
// response. It fails when the agent goes away or answers with an error.
type ChallengeFunc func(ctx context.Context, challenge []byte) ([]byte, error)

// Result is what a server-side attestor establishes about a node.
type Result struct {
	// AgentID is the agent's SPIFFE ID, in the server's trust domain,
	// normally under /spire/agent/<attestor name>/ as SPIRE's.
	AgentID spiffeid.ID
	// Selectors are the node's selectors (type = the attestor's name).
	Selectors []selector.Selector
	// CanReattest: the agent can repeat this proof, so it renews its SVID
	// by attesting again (and may re-attest after an eviction). False for
	// trust-on-first-use attestors such as join_token.
	CanReattest bool
}

// Errors a server-side attestor wraps so the API can answer precisely. An
// error wrapping neither is an internal failure (the store, the attestor's
// own configuration) and is reported without its details.
var (
	// ErrInvalid: the attestation data or a response is malformed (bad
	// encoding, missing field, oversized). The API answers InvalidArgument.
	ErrInvalid = errors.New("invalid attestation data")
	// ErrRefused: the data is well formed but does not prove the node's
	// identity (unknown or expired credential, untrusted chain, wrong
	// signature, replayed nonce, disallowed value). The API answers
	// PermissionDenied.
	ErrRefused = errors.New("attestation refused")
)

// Session is one attestation run by an agent-side attestor. The agent's
// manager sends Payload with the attestation type, then passes every
// challenge the server sends to Respond and sends back its answer, and
// calls Close when the exchange ends (successfully or not).
type Session interface {
	// Payload is the attestation data to send first.
	Payload() []byte
	// Respond answers one server challenge.
	Respond(ctx context.Context, challenge []byte) ([]byte, error)
	// Close releases what the session holds (for example TPM handles).
	Close() error
}
