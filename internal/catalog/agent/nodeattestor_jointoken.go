package agent

import (
	"context"
	"errors"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/config"
)

// NodeAttestor "join_token": its plugin_data is empty (as SPIRE's); the
// token is the agent's join_token (or -joinToken).
func init() {
	registerNodeAttestor(JoinTokenName, func(d *config.PluginData) (struct{}, error) { return struct{}{}, d.Done() },
		func(_ context.Context, _ struct{}, d NodeAttestorDeps) (NodeAttestor, error) {
			return JoinToken{Token: d.JoinToken}, nil
		})
}

// JoinTokenName is the name (and attestation data type) of the join-token
// node attestor.
const JoinTokenName = "join_token"

// JoinToken is the agent half of NodeAttestor "join_token": the payload is
// the token (agent join_token or -joinToken), and there is no challenge.
// The token is single use, so it is a manager.SingleUseAttestor: the agent
// presents it at most once and renews its SVID with RenewAgent.
//
// It lives here rather than in internal/attest/node/jointoken, whose
// server half links the server's datastore package, which the agent
// binary must not.
type JoinToken struct {
	// Token may be empty: an agent with a persisted SVID needs none.
	Token string
}

// Type is "join_token".
func (JoinToken) Type() string { return JoinTokenName }

// Begin starts an attestation with the token.
func (j JoinToken) Begin(context.Context) (node.Session, error) {
	if j.Token == "" {
		return nil, errors.New("no join token configured (agent join_token, or -joinToken)")
	}
	return tokenSession(j.Token), nil
}

// Credential reports whether a token is configured and the agent ID it
// attests as, spiffe://<td>/spire/agent/join_token/<token> (zero for a
// token that cannot be a path segment: the server will refuse it).
func (j JoinToken) Credential(td spiffeid.TrustDomain) (spiffeid.ID, bool) {
	if j.Token == "" {
		return spiffeid.ID{}, false
	}
	id, err := spiffeid.FromSegments(td, "spire", "agent", JoinTokenName, j.Token)
	if err != nil {
		return spiffeid.ID{}, true
	}
	return id, true
}

// tokenSession is a join-token attestation: the token, no challenge.
type tokenSession string

func (t tokenSession) Payload() []byte { return []byte(t) }

func (tokenSession) Respond(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("join_token attestation has no challenge")
}

func (tokenSession) Close() error { return nil }
