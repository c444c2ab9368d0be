package k8spsat

import (
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/kubeapi"
)

// ParseServerConfig reads the plugin_data of the server's NodeAttestor
// "k8s_psat" (SPIRE's keys):
//
//	clusters = {
//	    "<name>" = {
//	        service_account_allow_list = ["<namespace>:<service account>"]
//	        audience = ["spire-server"]        # optional
//	        kube_config_file = "<path>"        # optional: "" is in-cluster
//	        allowed_node_label_keys = [...]    # optional
//	        allowed_pod_label_keys = [...]     # optional
//	        use_pod_uid_for_agent_id = false   # optional
//	    }
//	}
//
// With load (kubeconfig.Loader), it also loads each cluster's
// kube_config_file (and the files it names), or the in-cluster service
// account when that is empty, so that `sigil-server validate` reports a
// configuration run could not use; it contacts no API server.
func ParseServerConfig(d *config.PluginData, load Loader) (ServerConfig, error) {
	var c ServerConfig
	if clusters := d.Block("clusters"); clusters != nil {
		for _, name := range clusters.Keys() {
			b := clusters.Block(name)
			if b == nil {
				continue
			}
			cl := ClusterConfig{Name: name}
			b.Strings("service_account_allow_list", &cl.ServiceAccountAllowList)
			var aud []string
			if b.Strings("audience", &aud) {
				cl.Audience = append([]string{}, aud...) // set, even empty: the API server's audiences
			}
			b.String("kube_config_file", &cl.KubeConfigFile)
			b.Strings("allowed_node_label_keys", &cl.AllowedNodeLabelKeys)
			b.Strings("allowed_pod_label_keys", &cl.AllowedPodLabelKeys)
			b.Bool("use_pod_uid_for_agent_id", &cl.UsePodUIDForAgentID)
			for _, p := range cl.problems() {
				b.Errorf(p.key, "cluster %q: %s", name, p.msg)
			}
			if load == nil {
				c.Clusters = append(c.Clusters, cl)
				continue
			}
			if err := kubeapi.New(load(cl.KubeConfigFile)).Check(); err != nil {
				if cl.KubeConfigFile == "" {
					b.Errorf("", "cluster %q: kube_config_file is not set, so the in-cluster service account is used: %v", name, err)
				} else {
					b.Errorf("kube_config_file", "cluster %q: %v", name, err)
				}
			}
			c.Clusters = append(c.Clusters, cl)
		}
	}
	return c, d.Done()
}

// ParseAgentConfig reads the plugin_data of the agent's NodeAttestor
// "k8s_psat" (SPIRE's keys: cluster, token_path). It also reads the token
// once, so that `sigil-agent validate` and `run` stop on a missing or empty
// token file (with token_path's line) instead of an agent that starts and
// can never attest; the agent reads it again at every attestation.
func ParseAgentConfig(d *config.PluginData) (AgentConfig, error) {
	var c AgentConfig
	d.String("cluster", &c.Cluster)
	d.String("token_path", &c.TokenPath)
	if err := c.Validate(); err != nil {
		d.Errorf("cluster", "%v", err)
	} else if _, err := ReadToken(c.tokenPath()); err != nil {
		d.Errorf("token_path", "%v", err)
	}
	return c, d.Done()
}
