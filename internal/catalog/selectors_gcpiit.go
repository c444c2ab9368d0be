//go:build !sigil_omit_gcp_iit

package catalog

import (
	"github.com/sigil-spiffe/sigil/internal/attest/node/gcpiit"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

func init() {
	optionalKinds = append(optionalKinds, func() []selector.Kind { return []selector.Kind{gcpiit.SelectorKind()} })
}
