//go:build !sigil_omit_k8s

package agent

import (
	"context"

	"github.com/sigil-spiffe/sigil/internal/attest/workload/k8s"
)

// WorkloadAttestor "k8s" (internal/attest/workload/k8s): the caller's pod
// and container from its cgroups and the kubelet's pod list.
func init() {
	registerWorkloadAttestor(k8s.Type, k8s.ParseConfig, func(_ context.Context, c k8s.Config, d WorkloadAttestorDeps) (WorkloadAttestor, error) {
		c.Log = d.Log
		return k8s.New(c)
	})
}
