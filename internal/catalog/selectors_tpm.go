//go:build !sigil_omit_tpm

package catalog

import "github.com/sigil-spiffe/sigil/internal/attest/node/tpm"

func init() { optionalKinds = append(optionalKinds, tpm.SelectorKinds) }
