package catalog

import (
	"fmt"
	"slices"

	"github.com/sigil-spiffe/sigil/internal/attest/node/jointoken"
	"github.com/sigil-spiffe/sigil/internal/attest/workload/unix"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// plannedWorkload and plannedNode are SPIRE's selector types (the names of
// its workload and node attestor plugins) for which Sigil has no attestor
// yet.
var (
	plannedWorkload = []string{"windows"}
	plannedNode     = []string{"http_challenge", "k8s_sat", "sshpop", "tpm_devid"}
)

// omittable lists the selector types of attestors a build tag can leave
// out (sigil_omit_<name>), with their plugin type: without its file
// (selectors_<name>.go), such a type is accepted like a planned one.
var omittable = []struct{ typ, plugin string }{
	{"aws_iid", "NodeAttestor"},
	{"azure_imds", "NodeAttestor"},
	{"azure_msi", "NodeAttestor"},
	{"docker", "WorkloadAttestor"},
	{"gcp_iit", "NodeAttestor"},
	{"k8s", "WorkloadAttestor"},
	{"k8s_psat", "NodeAttestor"},
	{"systemd", "WorkloadAttestor"},
	{"tpm", "NodeAttestor"},
	{"x509pop", "NodeAttestor"},
}

// optionalKinds are the selector kinds of the attestors this build has,
// added by the tagged files selectors_<name>.go.
var optionalKinds []func() []selector.Kind

// Selectors returns the registry of known selector types.
func Selectors() *selector.Registry {
	kinds := []selector.Kind{unix.SelectorKind()}
	kinds = append(kinds, jointoken.SelectorKinds()...)
	for _, k := range optionalKinds {
		kinds = append(kinds, k()...)
	}
	for _, o := range omittable {
		if !slices.ContainsFunc(kinds, func(k selector.Kind) bool { return k.Type == o.typ }) {
			kinds = append(kinds, selector.Kind{Type: o.typ, Producer: fmt.Sprintf("%s %q (left out of this build)", o.plugin, o.typ)})
		}
	}
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
