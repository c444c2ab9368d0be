package server

import (
	"context"

	"github.com/sigil-spiffe/sigil/internal/ca/upstreamdisk"
)

// UpstreamAuthority "disk" (internal/ca/upstreamdisk): building it loads
// the certificate and key files.
func init() {
	registerUpstreamAuthority("disk", upstreamdisk.ParseConfig, func(_ context.Context, c upstreamdisk.Config, d UpstreamAuthorityDeps) (UpstreamAuthority, error) {
		return upstreamdisk.Load(c, upstreamdisk.WithClock(d.Clock))
	})
}
