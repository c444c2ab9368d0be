//go:build !sigil_omit_azure_msi

package server

import (
	"context"
	"time"

	"github.com/sigil-spiffe/sigil/internal/attest/node/agentpath"
	"github.com/sigil-spiffe/sigil/internal/attest/node/azuremsi"
	"github.com/sigil-spiffe/sigil/internal/attest/node/azuremsi/armapi"
	"github.com/sigil-spiffe/sigil/internal/config"
)

// NodeAttestor "azure_msi" (internal/attest/node/azuremsi): Azure VMs prove
// themselves with their managed identity's token; the server asks Resource
// Manager about them (armapi: net/http, no Azure SDK).
func init() {
	parse := func(text string) (azuremsi.PathTemplate, error) { return agentpath.Parse(text) }
	registerNodeAttestor(azuremsi.Type,
		func(d *config.PluginData) (azuremsi.ServerConfig, error) { return azuremsi.ParseServerConfig(d, parse) },
		func(_ context.Context, c azuremsi.ServerConfig, d NodeAttestorDeps) (NodeAttestor, error) {
			opts := azuremsi.ServerOptions{TrustDomain: d.TrustDomain, ParseTemplate: parse, ARM: armapi.New(c), Now: time.Now}
			if d.Clock != nil {
				opts.Now = d.Clock.Now
			}
			return azuremsi.NewServer(c, opts)
		})
}
