package x509pop

import (
	"errors"

	"github.com/sigil-spiffe/sigil/internal/config"
)

// ParseServerConfig reads the plugin_data of the server's NodeAttestor
// "x509pop" (SPIRE's keys). parseTemplate (agentpath.Parse) checks
// agent_path_template's syntax; nil leaves that to NewServer. It also
// reads the CA bundle files, so that `sigil-server validate` reports one
// that is missing or holds no certificate, as `run` would.
//
// SPIRE's mode "spiffe" (device certificates that are SVIDs of the
// server's own trust domain) and verify_client_ip = true are not
// implemented and refused; mode = "external_pki", the default, is
// accepted.
func ParseServerConfig(d *config.PluginData, parseTemplate func(string) (PathTemplate, error)) (ServerConfig, error) {
	var c ServerConfig
	d.Unsupported("svid_prefix")
	var mode string
	if d.String("mode", &mode) && mode != "external_pki" {
		d.Errorf("mode", "mode %q is not supported: Sigil's x509pop verifies device certificates against ca_bundle_path(s) (mode \"external_pki\")", mode)
	}
	var verifyIP bool
	if d.Bool("verify_client_ip", &verifyIP) && verifyIP {
		d.Errorf("verify_client_ip", "verify_client_ip = true is not supported")
	}
	d.String("ca_bundle_path", &c.CABundlePath)
	d.Strings("ca_bundle_paths", &c.CABundlePaths)
	if d.String("agent_path_template", &c.AgentPathTemplate) && parseTemplate != nil {
		if _, err := parseTemplate(c.AgentPathTemplate); err != nil {
			d.Errorf("agent_path_template", "%v", err)
		}
	}
	positive := func(key string, dst *int) {
		var n int64
		if !d.Int(key, &n) {
			return
		}
		if n <= 0 || n > 1<<20 {
			d.Errorf(key, "%s must be greater than 0", key)
			return
		}
		*dst = int(n)
	}
	positive("max_intermediates", &c.MaxIntermediates)
	positive("max_rsa_key_size", &c.MaxRSAKeySize)
	if err := c.Validate(); err != nil {
		d.Errorf("", "%v", err)
	} else {
		key := "ca_bundle_path"
		if c.CABundlePath == "" {
			key = "ca_bundle_paths"
		}
		for _, p := range c.bundlePaths() {
			if _, err := LoadCertificates(p); err != nil {
				d.Errorf(key, "CA bundle: %v", err)
			}
		}
	}
	return c, d.Done()
}

// ParseAgentConfig reads the plugin_data of the agent's NodeAttestor
// "x509pop" (SPIRE's keys). SPIRE's spiffe_endpoint_socket (the device
// identity from a Workload API) is not implemented and refused.
//
// It also loads the device's files once, as spire-agent does when it
// configures the plugin, so that `sigil-agent validate` and `run` stop on
// a missing or unusable certificate or key (with the key's line) instead
// of an agent that starts and can never attest. The agent reads them again
// at every attestation.
func ParseAgentConfig(d *config.PluginData) (AgentConfig, error) {
	var c AgentConfig
	d.Unsupported("spiffe_endpoint_socket")
	d.String("private_key_path", &c.PrivateKeyPath)
	d.String("certificate_path", &c.CertificatePath)
	d.String("intermediates_path", &c.IntermediatesPath)
	if c.PrivateKeyPath == "" {
		d.Errorf("", "private_key_path is required")
	}
	if c.CertificatePath == "" {
		d.Errorf("", "certificate_path is required")
	}
	if c.Validate() == nil {
		if _, _, err := (&Agent{cfg: c}).load(); err != nil {
			var le *loadError
			if errors.As(err, &le) {
				d.Errorf(le.key, "%v", le.err)
			} else {
				d.Errorf("", "%v", err)
			}
		}
	}
	return c, d.Done()
}
