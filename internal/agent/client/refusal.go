package client

import (
	"errors"
	"fmt"

	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// RefusalKind says what a server's refusal of the agent's SVID means.
type RefusalKind int

// Refusal kinds.
const (
	// Banned: the agent is banned (AGENT_BANNED). Its identity is revoked
	// and the same agent ID may attest again only after an operator
	// deletes the agent record.
	Banned RefusalKind = iota + 1
	// Evicted: the server holds no record this SVID is valid for: the
	// agent was deleted (AGENT_NOT_ATTESTED) or attested again elsewhere
	// (AGENT_NOT_ACTIVE, another serial number is current). Its identity
	// is revoked; it may attest again.
	Evicted
	// MustReattest: the node must renew its SVID through attestation
	// instead of RenewAgent (AGENT_MUST_REATTEST). The SVID itself is
	// still accepted: nothing is revoked.
	MustReattest
	// AttestationDenied: the server refused the node's attestation
	// (re-attestation at renewal, or after an eviction) as not proving
	// its identity: a revoked device certificate, a changed PCR. Its
	// identity is revoked. RefusalOf never returns it: the agent's
	// manager makes it from the attestation's error (see
	// ReattestationRefused).
	AttestationDenied
)

// ReasonAttestationRefused is the Reason of an AttestationDenied
// refusal. SPIRE has no PermissionDeniedDetails reason for it.
const ReasonAttestationRefused = "ATTESTATION_REFUSED"

func (k RefusalKind) String() string {
	switch k {
	case Banned:
		return "banned"
	case Evicted:
		return "evicted"
	case MustReattest:
		return "must re-attest"
	case AttestationDenied:
		return "attestation refused"
	}
	return fmt.Sprintf("RefusalKind(%d)", int(k))
}

// Refusal is the server's refusal of the agent's SVID.
type Refusal struct {
	Kind RefusalKind
	// Reason is SPIRE's PermissionDeniedDetails reason name, e.g.
	// "AGENT_BANNED".
	Reason string
	// Message is the server's status message.
	Message string
}

// Revokes reports whether the refusal revokes the agent's identity
// (banned, evicted, attestation refused).
func (r Refusal) Revokes() bool {
	return r.Kind == Banned || r.Kind == Evicted || r.Kind == AttestationDenied
}

// RefusalOf recognises, in err (or any error it wraps), a refusal of the
// agent's SVID by the server: a PermissionDenied status carrying SPIRE's
// PermissionDeniedDetails, which both sigil-server and spire-server attach
// to every denial of an agent's identity (the authorization check of every
// agent call, and RenewAgent). It is the only proof that the server has
// revoked the agent: anything else (Unavailable, DeadlineExceeded, a TLS or
// network failure, a server restart, an Internal error, a PermissionDenied
// without details) is not a refusal, and neither is AGENT_EXPIRED (the
// server saw an expired SVID: clock skew or an SVID that expired while
// offline, not an operator's decision).
func RefusalOf(err error) (Refusal, bool) {
	st, ok := serverStatus(err)
	if !ok || st.Code() != codes.PermissionDenied {
		return Refusal{}, false
	}
	for _, d := range st.Details() {
		pd, ok := d.(*types.PermissionDeniedDetails)
		if !ok {
			continue
		}
		r := Refusal{Reason: pd.GetReason().String(), Message: st.Message()}
		switch pd.GetReason() {
		case types.PermissionDeniedDetails_AGENT_BANNED:
			r.Kind = Banned
		case types.PermissionDeniedDetails_AGENT_NOT_ATTESTED, types.PermissionDeniedDetails_AGENT_NOT_ACTIVE:
			r.Kind = Evicted
		case types.PermissionDeniedDetails_AGENT_MUST_REATTEST:
			r.Kind = MustReattest
		default:
			continue
		}
		return r, true
	}
	return Refusal{}, false
}

// AttestationRefused reports whether a node attestation error is the
// server's final answer about the credential the agent presented (an
// unknown, used or expired join token, an attestation type the server does
// not accept, a banned agent ID): retrying with the same credential cannot
// succeed. It returns the server's status message. Errors that may pass
// (unreachable server, TLS failure, timeout, rate limit, a server-side
// Internal error) are not refusals.
func AttestationRefused(err error) (string, bool) {
	st, ok := serverStatus(err)
	if !ok {
		return "", false
	}
	switch st.Code() {
	case codes.InvalidArgument, codes.PermissionDenied, codes.FailedPrecondition, codes.NotFound,
		codes.Unauthenticated, codes.AlreadyExists, codes.OutOfRange, codes.Unimplemented:
		return st.Message(), true
	}
	return "", false
}

// ReattestationRefused recognises, in the error of a node attestation by an
// agent whose attestor can repeat its proof, the server's verdict that the
// node does not prove its identity: PermissionDenied (the attestor refused
// the proof: untrusted or revoked certificate, wrong signature, changed
// measurements, banned agent ID) or InvalidArgument (malformed attestation
// data or answer). Such an agent loses its identity. Other final answers
// (an attestation type the server is not configured for, Unimplemented)
// are about the server's configuration, not the node, and the agent
// retries them like an unreachable server.
func ReattestationRefused(err error) (Refusal, bool) {
	st, ok := serverStatus(err)
	if !ok || (st.Code() != codes.PermissionDenied && st.Code() != codes.InvalidArgument) {
		return Refusal{}, false
	}
	if r, ok := RefusalOf(err); ok {
		return r, true // e.g. AGENT_BANNED, if a server sends it here
	}
	return Refusal{Kind: AttestationDenied, Reason: ReasonAttestationRefused, Message: st.Message()}, true
}

// serverStatus returns the gRPC status err wraps, with the server's own
// message (status.FromError would replace it with err's whole text).
func serverStatus(err error) (*status.Status, bool) {
	var se interface{ GRPCStatus() *status.Status }
	if err == nil || !errors.As(err, &se) {
		return nil, false
	}
	st := se.GRPCStatus()
	return st, st != nil
}
