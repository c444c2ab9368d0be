package azureimds

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"strings"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/config"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
)

// Tenant is one tenant of tenants { "<tenant domain>" { ... } }.
type Tenant struct {
	// Domain is the key: a tenant domain (its tenant ID is looked up at
	// Azure AD) or, a Sigil extension, the tenant ID itself.
	Domain string
	// AppID and AppSecret (secret_auth { app_id app_secret }): the app
	// registration that reads the tenant's VMs; none: the server's own
	// managed identity.
	AppID, AppSecret string
	// TokenPath (token_auth { app_id token_path }): the app authenticates
	// with the JWT in this file (a client assertion) instead of a secret.
	TokenPath string
	// RestrictToSubscriptions (restrict_to_subscriptions): the only
	// subscriptions allowed (none: any).
	RestrictToSubscriptions []string
	// AllowedVMTags (allowed_vm_tags): the tag keys that become vm-tag
	// selectors.
	AllowedVMTags []string
}

// ServerConfig is the plugin_data of the server's NodeAttestor
// "azure_imds": SPIRE's keys and Sigil's endpoints.
type ServerConfig struct {
	Tenants                []Tenant
	AgentPathTemplate      string
	AllowedMetadataDomains []string
	// TrustBundlePath (trust_bundle_path): more root CAs, added to the
	// embedded Microsoft roots; Roots are its certificates, once parsed.
	TrustBundlePath string
	Roots           []*x509.Certificate
	// LoginEndpoint, ManagementEndpoint, MetadataEndpoint (Sigil
	// extensions): Azure AD, Resource Manager, the server's own metadata
	// service.
	LoginEndpoint, ManagementEndpoint, MetadataEndpoint string
}

// DefaultMetadataDomain is allowed_metadata_domains's default (SPIRE's).
const DefaultMetadataDomain = "metadata.azure.com"

// Endpoint defaults.
const (
	DefaultLoginEndpoint      = "https://login.microsoftonline.com"
	DefaultManagementEndpoint = "https://management.azure.com"
)

// Endpoints returns the endpoints with their defaults.
func (c ServerConfig) Endpoints() (login, management, metadata string) {
	def := func(s, d string) string {
		if s == "" {
			s = d
		}
		return strings.TrimSuffix(s, "/")
	}
	return def(c.LoginEndpoint, DefaultLoginEndpoint), def(c.ManagementEndpoint, DefaultManagementEndpoint), def(c.MetadataEndpoint, DefaultMetadataEndpoint)
}

// Domains returns allowed_metadata_domains or its default.
func (c ServerConfig) Domains() []string {
	if len(c.AllowedMetadataDomains) == 0 {
		return []string{DefaultMetadataDomain}
	}
	return c.AllowedMetadataDomains
}

// LoadRoots reads a PEM file of CA certificates.
func LoadRoots(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if !c.IsCA {
			return nil, fmt.Errorf("%s: %s is not a CA certificate", path, clip.Quote(c.Subject.String()))
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return out, nil
}

// ParseServerConfig reads the plugin_data of the server's NodeAttestor
// "azure_imds":
//
//	tenants = {
//	    "<tenant domain>" = {
//	        secret_auth = { app_id = "<id>" app_secret = "<secret>" }  # optional
//	        restrict_to_subscriptions = ["<subscription id>"]          # optional
//	        allowed_vm_tags = ["<tag key>"]                           # optional
//	    }
//	}
//	agent_path_template = "..."
//	allowed_metadata_domains = ["metadata.azure.com"]
//	trust_bundle_path = "<PEM file>"
//
// or token_auth = { app_id = "<id>" token_path = "<JWT file>" } instead of
// secret_auth. parseTemplate
// (agentpath.Parse) checks agent_path_template.
func ParseServerConfig(d *config.PluginData, parseTemplate func(string) (PathTemplate, error)) (ServerConfig, error) {
	var c ServerConfig
	if tenants := d.Block("tenants"); tenants != nil {
		for _, dom := range tenants.Keys() {
			b := tenants.Block(dom)
			if b == nil {
				continue
			}
			t := Tenant{Domain: dom}
			if sa := b.Block("secret_auth"); sa != nil {
				sa.String("app_id", &t.AppID)
				sa.String("app_secret", &t.AppSecret)
				if t.AppID == "" || t.AppSecret == "" {
					sa.Errorf("", "tenant %s: secret_auth needs app_id and app_secret", clip.Quote(dom))
				}
			}
			if ta := b.Block("token_auth"); ta != nil {
				if t.AppID != "" {
					ta.Errorf("", "tenant %s: secret_auth and token_auth are mutually exclusive", clip.Quote(dom))
				}
				ta.String("app_id", &t.AppID)
				ta.String("token_path", &t.TokenPath)
				if t.AppID == "" || t.TokenPath == "" {
					ta.Errorf("", "tenant %s: token_auth needs app_id and token_path", clip.Quote(dom))
				}
			}
			b.Strings("restrict_to_subscriptions", &t.RestrictToSubscriptions)
			for i, s := range t.RestrictToSubscriptions {
				t.RestrictToSubscriptions[i] = strings.TrimSpace(s)
				if !reGUID.MatchString(t.RestrictToSubscriptions[i]) {
					b.Errorf("restrict_to_subscriptions", "tenant %s: %s is not a subscription ID", clip.Quote(dom), clip.Quote(s))
				}
			}
			b.Strings("allowed_vm_tags", &t.AllowedVMTags)
			c.Tenants = append(c.Tenants, t)
		}
	}
	if len(c.Tenants) == 0 {
		d.Errorf("tenants", "at least one tenant is required: tenants { \"<tenant domain>\" { } }")
	}
	if d.String("agent_path_template", &c.AgentPathTemplate) && parseTemplate != nil {
		if _, err := parseTemplate(c.AgentPathTemplate); err != nil {
			d.Errorf("agent_path_template", "%v", err)
		}
	}
	d.Strings("allowed_metadata_domains", &c.AllowedMetadataDomains)
	for _, dom := range c.AllowedMetadataDomains {
		if dom == "" || strings.ContainsAny(dom, "/:* ") || strings.HasPrefix(dom, ".") {
			d.Errorf("allowed_metadata_domains", "%s is not a domain name", clip.Quote(dom))
		}
	}
	if d.String("trust_bundle_path", &c.TrustBundlePath) {
		roots, err := LoadRoots(c.TrustBundlePath)
		if err != nil {
			d.Errorf("trust_bundle_path", "%v", err)
		}
		c.Roots = roots
	}
	d.String("login_endpoint", &c.LoginEndpoint)
	d.String("management_endpoint", &c.ManagementEndpoint)
	d.String("metadata_endpoint", &c.MetadataEndpoint)
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
// "azure_imds": SPIRE's tenant_domain and Sigil's metadata_endpoint.
func ParseAgentConfig(d *config.PluginData) (AgentConfig, error) {
	var c AgentConfig
	d.String("tenant_domain", &c.TenantDomain)
	d.String("metadata_endpoint", &c.MetadataEndpoint)
	if _, err := NewAgent(c); err != nil {
		key := "metadata_endpoint"
		if c.TenantDomain == "" {
			key = "tenant_domain"
		}
		d.Errorf(key, "%v", err)
	}
	return c, d.Done()
}
