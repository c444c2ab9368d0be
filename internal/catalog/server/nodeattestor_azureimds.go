//go:build !sigil_omit_azure_imds

package server

import (
	"context"
	"time"

	"github.com/sigil-spiffe/sigil/internal/attest/node/agentpath"
	"github.com/sigil-spiffe/sigil/internal/attest/node/azureimds"
	"github.com/sigil-spiffe/sigil/internal/attest/node/azureimds/armimds"
	"github.com/sigil-spiffe/sigil/internal/config"
)

// NodeAttestor "azure_imds" (internal/attest/node/azureimds): Azure VMs
// prove themselves with their metadata service's attested document (PKCS
// #7, Microsoft's certificate); the server asks Resource Manager about
// them (armimds and azurearm: net/http, no Azure SDK).
func init() {
	parse := func(text string) (azureimds.PathTemplate, error) { return agentpath.Parse(text) }
	registerNodeAttestor(azureimds.Type,
		func(d *config.PluginData) (azureimds.ServerConfig, error) {
			return azureimds.ParseServerConfig(d, parse)
		},
		func(_ context.Context, c azureimds.ServerConfig, d NodeAttestorDeps) (NodeAttestor, error) {
			opts := azureimds.ServerOptions{TrustDomain: d.TrustDomain, ParseTemplate: parse, ARM: armimds.New(c), Now: time.Now}
			if d.Clock != nil {
				opts.Now = d.Clock.Now
			}
			return azureimds.NewServer(c, opts)
		})
}
