// Package crds holds the CustomResourceDefinitions of the resources
// sigil-controller reconciles (spire-controller-manager's, group
// spire.spiffe.io, version v1alpha1): ClusterSPIFFEID, ClusterStaticEntry
// and ClusterFederatedTrustDomain. The YAML files are the source: the Helm
// chart (deploy/helm/sigil/crds) carries byte-identical copies, which a
// test checks, and the controller's tests apply them to a real API server.
package crds

import (
	"embed"
	"io/fs"
	"path"
	"slices"
)

//go:embed *.yaml
var files embed.FS

// File is one CRD manifest.
type File struct {
	Name string // base name, spire.spiffe.io_<plural>.yaml
	YAML []byte
}

// Files returns the CRD manifests, sorted by name.
func Files() []File {
	names, err := fs.Glob(files, "*.yaml")
	if err != nil {
		panic(err) // a static pattern
	}
	slices.Sort(names)
	out := make([]File, 0, len(names))
	for _, n := range names {
		b, err := files.ReadFile(n)
		if err != nil {
			panic(err) // embedded
		}
		out = append(out, File{Name: path.Base(n), YAML: b})
	}
	return out
}
