//go:build !sigil_omit_tpm

package agent

import (
	"context"

	"github.com/sigil-spiffe/sigil/internal/keys/tpmkey"
)

// KeyManager "tpm" (internal/keys/tpmkey): the agent SVID key is created
// in the TPM and never leaves it; plugin_data directory (required: the
// TPM-wrapped key files) and tpm_path (default /dev/tpmrm0).
func init() {
	registerKeyManager(tpmkey.Name, tpmkey.ParseConfig, func(_ context.Context, c tpmkey.Config, _ KeyManagerDeps) (KeyManager, error) {
		return tpmkey.New(c)
	})
}
