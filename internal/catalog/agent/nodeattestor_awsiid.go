//go:build !sigil_omit_aws_iid

package agent

import (
	"context"

	"github.com/sigil-spiffe/sigil/internal/attest/node/awsiid"
)

// NodeAttestor "aws_iid" (internal/attest/node/awsiid): the agent sends the
// instance identity document and its signatures from the instance metadata
// service (plain HTTP, IMDSv2; no AWS SDK in the agent).
func init() {
	registerNodeAttestor(awsiid.Type, awsiid.ParseAgentConfig,
		func(_ context.Context, c awsiid.AgentConfig, _ NodeAttestorDeps) (NodeAttestor, error) {
			return awsiid.NewAgent(c)
		})
}
