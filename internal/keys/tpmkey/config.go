package tpmkey

import (
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/keys"
)

// ParseConfig reads the plugin_data of the agent's KeyManager "tpm":
// directory (required: where the TPM-wrapped keys are kept) and tpm_path
// (the TPM device or socket, default /dev/tpmrm0).
func ParseConfig(d *config.PluginData) (Config, error) {
	var c Config
	d.String("directory", &c.Directory)
	d.String("tpm_path", &c.TPMPath)
	if c.Directory == "" {
		d.Errorf("", "directory must be configured")
	} else if err := keys.CheckDir(c.Directory); err != nil {
		d.Errorf("directory", "directory: %v", err)
	}
	return c, d.Done()
}
