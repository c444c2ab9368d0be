//go:build !sigil_omit_aws_iid

package server

import (
	"context"

	"github.com/sigil-spiffe/sigil/internal/attest/node/agentpath"
	"github.com/sigil-spiffe/sigil/internal/attest/node/awsiid"
	"github.com/sigil-spiffe/sigil/internal/attest/node/awsiid/awsapi"
	"github.com/sigil-spiffe/sigil/internal/config"
)

// NodeAttestor "aws_iid" (internal/attest/node/awsiid): EC2 instances
// prove themselves with their signed instance identity document; the
// server asks EC2 about them through the AWS SDK (awsapi, linked by the
// server only).
func init() {
	parse := func(text string) (awsiid.PathTemplate, error) { return agentpath.Parse(text) }
	registerNodeAttestor(awsiid.Type,
		func(d *config.PluginData) (awsiid.ServerConfig, error) { return awsiid.ParseServerConfig(d, parse) },
		func(ctx context.Context, c awsiid.ServerConfig, d NodeAttestorDeps) (NodeAttestor, error) {
			api, err := awsapi.New(ctx, c)
			if err != nil {
				return nil, err
			}
			return awsiid.NewServer(c, awsiid.ServerOptions{TrustDomain: d.TrustDomain, ParseTemplate: parse, EC2: api})
		})
}
