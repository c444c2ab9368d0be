//go:build !sigil_omit_x509pop

package catalog

import (
	"github.com/sigil-spiffe/sigil/internal/attest/node/x509pop"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

func init() {
	optionalKinds = append(optionalKinds, func() []selector.Kind { return []selector.Kind{x509pop.SelectorKind()} })
}
