package server

import (
	"context"

	"github.com/sigil-spiffe/sigil/internal/ca/upstreamspire"
)

// UpstreamAuthority "spire" (internal/ca/upstreamspire): a nested server's
// upstream. Building it does no I/O (the CA contacts the upstream when it
// needs it); it holds connections, so the server closes it.
func init() {
	registerUpstreamAuthority("spire", upstreamspire.ParseConfig, func(_ context.Context, c upstreamspire.Config, d UpstreamAuthorityDeps) (UpstreamAuthority, error) {
		c.TrustDomain, c.Log = d.TrustDomain, d.Log
		return upstreamspire.New(c)
	})
}
