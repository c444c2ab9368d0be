//go:build !sigil_omit_k8s_psat

package agent

import (
	"context"

	"github.com/sigil-spiffe/sigil/internal/attest/node/k8spsat"
)

// NodeAttestor "k8s_psat" (internal/attest/node/k8spsat): the agent sends
// its pod's projected service account token, read at every attestation
// (the kubelet rotates it); the proof being repeatable, it renews by
// attesting again.
func init() {
	registerNodeAttestor(k8spsat.Type, k8spsat.ParseAgentConfig,
		func(_ context.Context, c k8spsat.AgentConfig, _ NodeAttestorDeps) (NodeAttestor, error) {
			return k8spsat.NewAgent(c)
		})
}
