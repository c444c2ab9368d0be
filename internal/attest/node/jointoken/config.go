package jointoken

import "github.com/sigil-spiffe/sigil/internal/config"

// PluginConfig is NodeAttestor "join_token"'s plugin_data: it has no
// settings (as SPIRE's).
type PluginConfig struct{}

// ParseConfig reads NodeAttestor "join_token"'s plugin_data, which must be
// empty: any key is reported with its file:line.
func ParseConfig(d *config.PluginData) (PluginConfig, error) {
	return PluginConfig{}, d.Done()
}
