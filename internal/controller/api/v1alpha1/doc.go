// Package v1alpha1 holds the Go types of spire-controller-manager's custom
// resources (group spire.spiffe.io, version v1alpha1), which
// sigil-controller reconciles: ClusterSPIFFEID, ClusterStaticEntry and
// ClusterFederatedTrustDomain. Their JSON field names are those of
// spire-controller-manager, so its manifests apply unchanged; the CRD
// schemas are in internal/controller/crds.
//
// Sigil extensions, all additive (a spire-controller-manager manifest means
// the same here):
//   - ttl, jwtTtl (and ClusterStaticEntry's x509SVIDTTL, jwtSVIDTTL) take an
//     integer number of seconds as well as a Go duration string ("1h");
//   - ClusterSPIFFEID's jwtSvidTTL is accepted as another spelling of jwtTtl;
//   - namespaceSelector.matchNames selects namespaces by name (ANDed with
//     the label requirements);
//   - status.conditions report what rendered and the first failure.
//
// Only the controller's packages (cmd/sigil-controller, internal/controller)
// may import this package: it links k8s.io/apimachinery.
package v1alpha1
