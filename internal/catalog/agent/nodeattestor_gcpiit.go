//go:build !sigil_omit_gcp_iit

package agent

import (
	"context"

	"github.com/sigil-spiffe/sigil/internal/attest/node/gcpiit"
)

// NodeAttestor "gcp_iit" (internal/attest/node/gcpiit): the agent sends the
// identity token of the instance's service account from the metadata server
// (plain HTTP; no Google client library in the agent).
func init() {
	registerNodeAttestor(gcpiit.Type, gcpiit.ParseAgentConfig,
		func(_ context.Context, c gcpiit.AgentConfig, _ NodeAttestorDeps) (NodeAttestor, error) {
			return gcpiit.NewAgent(c)
		})
}
