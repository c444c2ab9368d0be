package azuremsi

import (
	"github.com/sigil-spiffe/sigil/internal/config"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
)

// ParseServerConfig reads the plugin_data of the server's NodeAttestor
// "azure_msi" (SPIRE's keys, and Sigil's login_endpoint,
// management_endpoint and metadata_endpoint):
//
//	tenants = {
//	    "<tenant id>" = {
//	        resource_id = "https://management.azure.com/"  # optional
//	        subscription_id = "<id>"                       # with app_id and
//	        app_id = "<id>"                                # app_secret, or
//	        app_secret = "<secret>"                        # none of the three
//	    }
//	}
//	agent_path_template = "..."
//
// parseTemplate (agentpath.Parse) checks agent_path_template.
func ParseServerConfig(d *config.PluginData, parseTemplate func(string) (PathTemplate, error)) (ServerConfig, error) {
	var c ServerConfig
	if tenants := d.Block("tenants"); tenants != nil {
		for _, id := range tenants.Keys() {
			b := tenants.Block(id)
			if b == nil {
				continue
			}
			t := Tenant{ID: id}
			b.String("resource_id", &t.ResourceID)
			b.String("subscription_id", &t.SubscriptionID)
			b.String("app_id", &t.AppID)
			b.String("app_secret", &t.AppSecret)
			if err := t.Validate(); err != nil {
				b.Errorf("", "%v", err)
			}
			c.Tenants = append(c.Tenants, t)
		}
	}
	if d.String("agent_path_template", &c.AgentPathTemplate) && parseTemplate != nil {
		if _, err := parseTemplate(c.AgentPathTemplate); err != nil {
			d.Errorf("agent_path_template", "%v", err)
		}
	}
	d.String("login_endpoint", &c.LoginEndpoint)
	d.String("management_endpoint", &c.ManagementEndpoint)
	d.String("metadata_endpoint", &c.MetadataEndpoint)
	if len(c.Tenants) == 0 {
		d.Errorf("tenants", "at least one tenant is required: tenants { \"<tenant id>\" { } }")
	}
	for _, e := range []struct{ key, v string }{{"login_endpoint", c.LoginEndpoint}, {"management_endpoint", c.ManagementEndpoint}, {"metadata_endpoint", c.MetadataEndpoint}} {
		if e.v != "" {
			if _, err := node.ParseEndpoint(e.v); err != nil {
				d.Errorf(e.key, "%s: %v", e.key, err)
			}
		}
	}
	return c, d.Done()
}

// ParseAgentConfig reads the plugin_data of the agent's NodeAttestor
// "azure_msi": SPIRE's resource_id and Sigil's metadata_endpoint.
func ParseAgentConfig(d *config.PluginData) (AgentConfig, error) {
	var c AgentConfig
	d.String("resource_id", &c.ResourceID)
	d.String("metadata_endpoint", &c.MetadataEndpoint)
	if _, err := NewAgent(c); err != nil {
		d.Errorf("metadata_endpoint", "%v", err)
	}
	return c, d.Done()
}
