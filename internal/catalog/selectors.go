// Package catalog lists what Sigil has built in. Today it holds the
// selector types (Selectors): those of Sigil's own attestors, each declared
// by the attestor's package next to the code that produces them, and the
// types of attestors SPIRE has that Sigil does not implement yet, accepted
// without value checks so that entries for them (from
// spire-controller-manager, or ahead of the Sigil release that adds the
// attestor) are not refused. The plugin catalog of each binary grows here.
package catalog

import (
	"fmt"

	"github.com/sigil-spiffe/sigil/internal/attest/node/jointoken"
	"github.com/sigil-spiffe/sigil/internal/attest/node/tpm"
	"github.com/sigil-spiffe/sigil/internal/attest/node/x509pop"
	"github.com/sigil-spiffe/sigil/internal/attest/workload/unix"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// plannedWorkload and plannedNode are SPIRE's selector types (the names of
// its workload and node attestor plugins) for which Sigil has no attestor
// yet.
var (
	plannedWorkload = []string{"docker", "k8s", "systemd", "windows"}
	plannedNode     = []string{"aws_iid", "azure_imds", "azure_msi", "gcp_iit", "http_challenge", "k8s_psat", "k8s_sat", "sshpop", "tpm_devid"}
)

// Selectors returns the registry of known selector types.
func Selectors() *selector.Registry {
	kinds := []selector.Kind{unix.SelectorKind()}
	kinds = append(kinds, jointoken.SelectorKinds()...)
	kinds = append(kinds, tpm.SelectorKinds()...)
	kinds = append(kinds, x509pop.SelectorKind())
	for _, t := range plannedWorkload {
		kinds = append(kinds, selector.Kind{Type: t, Producer: fmt.Sprintf("SPIRE's WorkloadAttestor %q (not built into Sigil yet)", t)})
	}
	for _, t := range plannedNode {
		kinds = append(kinds, selector.Kind{Type: t, Producer: fmt.Sprintf("SPIRE's NodeAttestor %q (not built into Sigil yet)", t)})
	}
	r, err := selector.NewRegistry(kinds...)
	if err != nil {
		panic(err) // a duplicate in the lists above: a programming error
	}
	return r
}
