//go:build !sigil_omit_tpm

package agent

import (
	"context"

	"github.com/sigil-spiffe/sigil/internal/attest/node/tpm"
)

// NodeAttestor "tpm" (internal/attest/node/tpm): the TPM's EK and a fresh
// AK, credential activation, and a PCR quote when the server asks;
// plugin_data tpm_path (default /dev/tpmrm0).
func init() {
	registerNodeAttestor(tpm.Type, tpm.ParseAgentConfig, func(_ context.Context, c tpm.AgentConfig, _ NodeAttestorDeps) (NodeAttestor, error) {
		return tpm.NewAgent(c), nil
	})
}
