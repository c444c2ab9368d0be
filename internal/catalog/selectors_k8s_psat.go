//go:build !sigil_omit_k8s_psat

package catalog

import (
	"github.com/sigil-spiffe/sigil/internal/attest/node/k8spsat"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

func init() {
	optionalKinds = append(optionalKinds, func() []selector.Kind { return []selector.Kind{k8spsat.SelectorKind()} })
}
