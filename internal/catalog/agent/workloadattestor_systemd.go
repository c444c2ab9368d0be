//go:build !sigil_omit_systemd

package agent

import (
	"context"

	"github.com/sigil-spiffe/sigil/internal/attest/workload/systemd"
)

// WorkloadAttestor "systemd" (internal/attest/workload/systemd): the
// caller's systemd unit, from systemd over D-Bus on the system bus.
func init() {
	registerWorkloadAttestor(systemd.Type, systemd.ParseConfig, func(_ context.Context, c systemd.Config, _ WorkloadAttestorDeps) (WorkloadAttestor, error) {
		return systemd.New(c)
	})
}
