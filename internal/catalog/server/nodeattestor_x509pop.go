//go:build !sigil_omit_x509pop

package server

import (
	"context"

	"github.com/sigil-spiffe/sigil/internal/attest/node/agentpath"
	"github.com/sigil-spiffe/sigil/internal/attest/node/x509pop"
	"github.com/sigil-spiffe/sigil/internal/config"
)

// NodeAttestor "x509pop" (internal/attest/node/x509pop): devices prove
// possession of a certificate's key; agent_path_template is rendered by
// agentpath, which only the server links.
func init() {
	registerNodeAttestor(x509pop.Type,
		func(d *config.PluginData) (x509pop.ServerConfig, error) {
			return x509pop.ParseServerConfig(d, parseAgentPath)
		},
		func(_ context.Context, c x509pop.ServerConfig, d NodeAttestorDeps) (NodeAttestor, error) {
			return x509pop.NewServer(c, x509pop.ServerOptions{TrustDomain: d.TrustDomain, ParseTemplate: parseAgentPath, Clock: d.Clock})
		})
}

func parseAgentPath(text string) (x509pop.PathTemplate, error) { return agentpath.Parse(text) }
