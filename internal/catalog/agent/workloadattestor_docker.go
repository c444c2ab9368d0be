//go:build !sigil_omit_docker

package agent

import (
	"context"

	"github.com/sigil-spiffe/sigil/internal/attest/workload/docker"
)

// WorkloadAttestor "docker" (internal/attest/workload/docker): the
// caller's container from its cgroups, its labels, environment and image
// from the Docker Engine API (or Podman's) over a unix socket.
func init() {
	registerWorkloadAttestor(docker.Type, docker.ParseConfig, func(_ context.Context, c docker.Config, d WorkloadAttestorDeps) (WorkloadAttestor, error) {
		c.Log = d.Log
		return docker.New(c), nil
	})
}
