//go:build !sigil_omit_docker

package catalog

import "github.com/sigil-spiffe/sigil/internal/attest/workload/docker"

func init() { optionalKinds = append(optionalKinds, docker.SelectorKinds) }
