package server

import (
	"context"

	"github.com/sigil-spiffe/sigil/internal/attest/node/jointoken"
)

// NodeAttestor "join_token" (internal/attest/node/jointoken): the token is
// consumed by the transaction that records the node (the agent API asks
// the attestor for its hash).
func init() {
	registerNodeAttestor(jointoken.Type, jointoken.ParseConfig, func(_ context.Context, _ jointoken.PluginConfig, d NodeAttestorDeps) (NodeAttestor, error) {
		return jointoken.New(jointoken.Config{TrustDomain: d.TrustDomain, Tokens: d.Store, Clock: d.Clock})
	})
}
