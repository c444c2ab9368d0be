//go:build !sigil_omit_gcp_iit

package server

import (
	"context"
	"time"

	"github.com/sigil-spiffe/sigil/internal/attest/node/agentpath"
	"github.com/sigil-spiffe/sigil/internal/attest/node/gcpiit"
	"github.com/sigil-spiffe/sigil/internal/attest/node/gcpiit/computeapi"
	"github.com/sigil-spiffe/sigil/internal/config"
)

// NodeAttestor "gcp_iit" (internal/attest/node/gcpiit): Compute Engine
// instances prove themselves with the identity token Google signs; with
// use_instance_metadata the server asks the Compute API about them
// (computeapi, linked by the server only).
func init() {
	parse := func(text string) (gcpiit.PathTemplate, error) { return agentpath.Parse(text) }
	registerNodeAttestor(gcpiit.Type,
		func(d *config.PluginData) (gcpiit.ServerConfig, error) {
			return gcpiit.ParseServerConfig(d, parse, computeapi.CheckCredentials)
		},
		func(_ context.Context, c gcpiit.ServerConfig, d NodeAttestorDeps) (NodeAttestor, error) {
			opts := gcpiit.ServerOptions{TrustDomain: d.TrustDomain, ParseTemplate: parse, Now: time.Now}
			if d.Clock != nil {
				opts.Now = d.Clock.Now
			}
			if c.UseInstanceMetadata {
				api, err := computeapi.New(c)
				if err != nil {
					return nil, err
				}
				opts.Compute = api
			}
			return gcpiit.NewServer(c, opts)
		})
}
