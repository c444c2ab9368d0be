//go:build !sigil_omit_x509pop

package agent

import (
	"context"

	"github.com/sigil-spiffe/sigil/internal/attest/node/x509pop"
)

// NodeAttestor "x509pop" (internal/attest/node/x509pop): the agent proves
// possession of its device certificate's key; it reads its files at every
// attestation and, the proof being repeatable, renews by attesting again.
func init() {
	registerNodeAttestor(x509pop.Type, x509pop.ParseAgentConfig,
		func(_ context.Context, c x509pop.AgentConfig, _ NodeAttestorDeps) (NodeAttestor, error) {
			return x509pop.NewAgent(c)
		})
}
