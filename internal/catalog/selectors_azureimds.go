//go:build !sigil_omit_azure_imds

package catalog

import (
	"github.com/sigil-spiffe/sigil/internal/attest/node/azureimds"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

func init() {
	optionalKinds = append(optionalKinds, func() []selector.Kind { return []selector.Kind{azureimds.SelectorKind()} })
}
