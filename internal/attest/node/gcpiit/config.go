package gcpiit

import (
	"github.com/sigil-spiffe/sigil/internal/config"
)

// ParseServerConfig reads the plugin_data of the server's NodeAttestor
// "gcp_iit": SPIRE's keys and Sigil's audience, certificates_url and
// compute_endpoint. parseTemplate (agentpath.Parse) checks
// agent_path_template; checkCredentials, when not nil, loads
// service_account_file, so that `sigil-server validate` reports an unusable
// file as `run` would.
func ParseServerConfig(d *config.PluginData, parseTemplate func(string) (PathTemplate, error), checkCredentials func(path string) error) (ServerConfig, error) {
	var c ServerConfig
	d.Strings("projectid_allow_list", &c.ProjectIDAllowList)
	if d.String("agent_path_template", &c.AgentPathTemplate) && parseTemplate != nil {
		if _, err := parseTemplate(c.AgentPathTemplate); err != nil {
			d.Errorf("agent_path_template", "%v", err)
		}
	}
	d.Bool("use_instance_metadata", &c.UseInstanceMetadata)
	d.Strings("allowed_label_keys", &c.AllowedLabelKeys)
	d.Strings("allowed_metadata_keys", &c.AllowedMetadataKeys)
	d.Int("max_metadata_value_size", &c.MaxMetadataValueSize)
	if d.String("service_account_file", &c.ServiceAccountFile) && checkCredentials != nil {
		if err := checkCredentials(c.ServiceAccountFile); err != nil {
			d.Errorf("service_account_file", "service_account_file: %v", err)
		}
	}
	d.String("audience", &c.Audience)
	d.String("certificates_url", &c.CertificatesURL)
	d.String("compute_endpoint", &c.ComputeEndpoint)
	if err := c.Validate(); err != nil {
		d.Errorf("", "%v", err)
	}
	return c, d.Done()
}

// ParseAgentConfig reads the plugin_data of the agent's NodeAttestor
// "gcp_iit": SPIRE's identity_token_host and service_account, and Sigil's
// audience.
func ParseAgentConfig(d *config.PluginData) (AgentConfig, error) {
	var c AgentConfig
	d.String("identity_token_host", &c.IdentityTokenHost)
	d.String("service_account", &c.ServiceAccount)
	d.String("audience", &c.Audience)
	if _, err := NewAgent(c); err != nil {
		d.Errorf("", "%v", err)
	}
	return c, d.Done()
}
