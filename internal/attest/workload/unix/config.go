package unix

import "github.com/sigil-spiffe/sigil/internal/config"

// ParseConfig reads WorkloadAttestor "unix"'s plugin_data (SPIRE's keys):
// discover_workload_path and workload_size_limit. Clock and Log are left
// for the caller.
func ParseConfig(d *config.PluginData) (Config, error) {
	var c Config
	d.Bool("discover_workload_path", &c.DiscoverWorkloadPath)
	d.Int("workload_size_limit", &c.WorkloadSizeLimit)
	return c, d.Done()
}
