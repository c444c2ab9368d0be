//go:build !sigil_omit_aws_iid

package catalog

import (
	"github.com/sigil-spiffe/sigil/internal/attest/node/awsiid"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

func init() {
	optionalKinds = append(optionalKinds, func() []selector.Kind { return []selector.Kind{awsiid.SelectorKind()} })
}
