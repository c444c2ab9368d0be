package upstreamspire

import "github.com/sigil-spiffe/sigil/internal/config"

// ParseConfig reads UpstreamAuthority "spire"'s plugin_data (SPIRE's
// server_address, server_port, workload_api_socket) into a Config; the
// caller sets TrustDomain and Log. Errors name the key and its file:line.
func ParseConfig(d *config.PluginData) (Config, error) {
	var c Config
	d.String("server_address", &c.ServerAddress)
	portSet := d.Port("server_port", &c.ServerPort)
	d.String("workload_api_socket", &c.WorkloadAPISocket)
	d.Unsupported("experimental")
	if c.ServerAddress == "" {
		d.Errorf("server_address", "server_address must be configured")
	}
	switch {
	case !d.Has("server_port"):
		d.Errorf("", "server_port must be configured")
	case portSet && c.ServerPort == 0:
		d.Errorf("server_port", "server_port 0 out of range 1..65535")
	}
	if c.WorkloadAPISocket == "" {
		d.Errorf("workload_api_socket", "workload_api_socket must be configured")
	}
	return c, d.Done()
}
