//go:build !sigil_omit_azure_msi

package agent

import (
	"context"

	"github.com/sigil-spiffe/sigil/internal/attest/node/azuremsi"
)

// NodeAttestor "azure_msi" (internal/attest/node/azuremsi): the agent sends
// the VM's managed identity token from the instance metadata service
// (plain HTTP; no Azure SDK in the agent).
func init() {
	registerNodeAttestor(azuremsi.Type, azuremsi.ParseAgentConfig,
		func(_ context.Context, c azuremsi.AgentConfig, _ NodeAttestorDeps) (NodeAttestor, error) {
			return azuremsi.NewAgent(c)
		})
}
