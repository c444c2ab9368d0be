package agent

import (
	"context"

	"github.com/sigil-spiffe/sigil/internal/attest/workload/unix"
)

// WorkloadAttestor "unix" (internal/attest/workload/unix).
func init() {
	registerWorkloadAttestor(unix.Type, unix.ParseConfig, func(_ context.Context, c unix.Config, d WorkloadAttestorDeps) (WorkloadAttestor, error) {
		c.Clock, c.Log = d.Clock, d.Log
		return unix.New(c), nil
	})
}
