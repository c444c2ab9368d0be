//go:build !sigil_omit_azure_imds

package agent

import (
	"context"

	"github.com/sigil-spiffe/sigil/internal/attest/node/azureimds"
)

// NodeAttestor "azure_imds" (internal/attest/node/azureimds): the agent
// answers the server's nonce with the VM's attested document from the
// instance metadata service (plain HTTP; no Azure SDK, no PKCS #7 code in
// the agent).
func init() {
	registerNodeAttestor(azureimds.Type, azureimds.ParseAgentConfig,
		func(_ context.Context, c azureimds.AgentConfig, _ NodeAttestorDeps) (NodeAttestor, error) {
			return azureimds.NewAgent(c)
		})
}
