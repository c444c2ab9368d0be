//go:build !sigil_omit_systemd

package catalog

import "github.com/sigil-spiffe/sigil/internal/attest/workload/systemd"

func init() { optionalKinds = append(optionalKinds, systemd.SelectorKinds) }
