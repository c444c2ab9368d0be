//go:build !sigil_omit_azure_msi

package catalog

import (
	"github.com/sigil-spiffe/sigil/internal/attest/node/azuremsi"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

func init() {
	optionalKinds = append(optionalKinds, func() []selector.Kind { return []selector.Kind{azuremsi.SelectorKind()} })
}
