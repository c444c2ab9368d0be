package tpmkey

import "github.com/sigil-spiffe/sigil/internal/config"

// ParseConfig reads the plugin_data of the agent's KeyManager "tpm":
// directory (required: where the TPM-wrapped keys are kept) and tpm_path
// (the TPM device or socket, default /dev/tpmrm0).
func ParseConfig(d *config.PluginData) (Config, error) {
	var c Config
	d.String("directory", &c.Directory)
	d.String("tpm_path", &c.TPMPath)
	if c.Directory == "" {
		d.Errorf("", "directory must be configured")
	}
	return c, d.Done()
}
