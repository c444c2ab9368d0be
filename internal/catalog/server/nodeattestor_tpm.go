//go:build !sigil_omit_tpm

package server

import (
	"context"

	"github.com/sigil-spiffe/sigil/internal/attest/node/tpm"
)

// NodeAttestor "tpm" (internal/attest/node/tpm): TPM 2.0 attestation by
// the EK (manufacturer CA or allowed hashes) and credential activation of
// an AK, with an optional quote of PCRs (measured boot).
func init() {
	registerNodeAttestor(tpm.Type, tpm.ParseServerConfig, func(_ context.Context, c tpm.ServerConfig, d NodeAttestorDeps) (NodeAttestor, error) {
		return tpm.NewServer(d.TrustDomain, c)
	})
}
