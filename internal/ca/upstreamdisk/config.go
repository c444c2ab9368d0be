package upstreamdisk

import "github.com/sigil-spiffe/sigil/internal/config"

// Config is the plugin_data of UpstreamAuthority "disk".
type Config struct {
	CertFilePath   string // cert_file_path
	KeyFilePath    string // key_file_path
	BundleFilePath string // bundle_file_path, optional
}

// ParseConfig reads UpstreamAuthority "disk"'s plugin_data (SPIRE's keys).
// Errors name the key and its file:line.
func ParseConfig(d *config.PluginData) (Config, error) {
	var c Config
	d.String("cert_file_path", &c.CertFilePath)
	d.String("key_file_path", &c.KeyFilePath)
	d.String("bundle_file_path", &c.BundleFilePath)
	if c.CertFilePath == "" {
		d.Errorf("cert_file_path", "cert_file_path must be configured")
	}
	if c.KeyFilePath == "" {
		d.Errorf("key_file_path", "key_file_path must be configured")
	}
	return c, d.Done()
}

// Load loads the upstream CA c names (see New).
func Load(c Config, opts ...Option) (*Upstream, error) {
	return New(c.CertFilePath, c.KeyFilePath, c.BundleFilePath, opts...)
}
