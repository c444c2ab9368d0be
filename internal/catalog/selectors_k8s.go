//go:build !sigil_omit_k8s

package catalog

import "github.com/sigil-spiffe/sigil/internal/attest/workload/k8s"

func init() { optionalKinds = append(optionalKinds, k8s.SelectorKinds) }
