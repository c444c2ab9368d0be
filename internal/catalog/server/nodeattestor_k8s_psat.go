//go:build !sigil_omit_k8s_psat

package server

import (
	"context"

	"github.com/sigil-spiffe/sigil/internal/attest/node/k8spsat"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/kubeapi/kubeconfig"
)

// NodeAttestor "k8s_psat" (internal/attest/node/k8spsat): agents in pods
// prove their pod, service account and node with a projected service
// account token, checked with each cluster's API server; kube_config_file
// is read by kubeconfig, which only the server links.
func init() {
	registerNodeAttestor(k8spsat.Type,
		func(d *config.PluginData) (k8spsat.ServerConfig, error) {
			return k8spsat.ParseServerConfig(d, kubeconfig.Loader)
		},
		func(_ context.Context, c k8spsat.ServerConfig, d NodeAttestorDeps) (NodeAttestor, error) {
			return k8spsat.NewServer(c, k8spsat.ServerOptions{TrustDomain: d.TrustDomain, Loader: kubeconfig.Loader, Log: d.Log})
		})
}
