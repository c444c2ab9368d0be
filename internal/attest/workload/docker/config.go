package docker

import (
	"path/filepath"
	"strings"

	"github.com/sigil-spiffe/sigil/internal/attest/workload/cgroup"
	"github.com/sigil-spiffe/sigil/internal/config"
)

// ParseConfig reads WorkloadAttestor "docker"'s plugin_data, SPIRE's keys:
//
//	docker_socket_path              unix:// URL (default unix:///var/run/docker.sock)
//	docker_version                  Engine API version, e.g. "1.41" (default: negotiated)
//	container_id_cgroup_matchers    patterns (cgroup.Matchers), with use_new_container_locator = false
//	use_new_container_locator       default true
//	verbose_container_locator_logs  default false
//	podman_socket_path              unix:// URL (default unix:///run/podman/podman.sock)
//	podman_socket_path_template     unix:// URL with one %d (default unix:///run/user/%d/podman/podman.sock)
//
// and Sigil's proc_dir (default /proc). docker_host is Windows-only in
// SPIRE and refused here; sigstore (and the older experimental block) are
// SPIRE keys Sigil does not implement. Log is left for the caller.
func ParseConfig(d *config.PluginData) (Config, error) {
	var c Config
	d.Unsupported("sigstore", "experimental")
	if d.Has("docker_host") {
		var v string
		d.String("docker_host", &v)
		d.Errorf("docker_host", "docker_host is SPIRE's Windows setting (a named pipe); on Linux the daemon's socket is docker_socket_path, e.g. \"unix:///var/run/docker.sock\"")
	}
	for _, k := range []struct {
		key string
		dst *string
		tmp bool
	}{
		{"docker_socket_path", &c.SocketPath, false},
		{"podman_socket_path", &c.PodmanSocketPath, false},
		{"podman_socket_path_template", &c.PodmanSocketTemplate, true},
	} {
		if d.String(k.key, k.dst) {
			checkSocketURL(d, k.key, *k.dst, k.tmp)
		}
	}
	if d.String("docker_version", &c.Version) && !validVersion(c.Version) {
		d.Errorf("docker_version", "docker_version %q is not an Engine API version such as \"1.41\"", c.Version)
	}
	var patterns []string
	hasMatchers := d.Strings("container_id_cgroup_matchers", &patterns)
	newLocator := true
	explicit := d.Bool("use_new_container_locator", &newLocator)
	d.Bool("verbose_container_locator_logs", &c.VerboseLocatorLogs)
	if hasMatchers {
		switch {
		case newLocator && explicit:
			d.Errorf("container_id_cgroup_matchers", "container_id_cgroup_matchers need use_new_container_locator = false: the new locator finds container IDs by itself and does not read matchers (as in SPIRE)")
		case newLocator:
			d.Errorf("container_id_cgroup_matchers", "container_id_cgroup_matchers need use_new_container_locator = false (the new locator, the default, does not read them; as in SPIRE)")
		default:
			m, err := cgroup.CompileMatchers(patterns)
			if err != nil {
				d.Errorf("container_id_cgroup_matchers", "container_id_cgroup_matchers: %v", err)
			}
			c.Matchers = m
		}
	}
	if d.String("proc_dir", &c.ProcDir) && (!filepath.IsAbs(c.ProcDir) || filepath.Clean(c.ProcDir) != c.ProcDir) {
		d.Errorf("proc_dir", "proc_dir %q is not an absolute, clean path", c.ProcDir)
	}
	return c, d.Done()
}

// checkSocketURL: "unix://" and an absolute path; a template holds exactly
// one %d (and %% for a literal %).
func checkSocketURL(d *config.PluginData, key, v string, template bool) {
	p, ok := strings.CutPrefix(v, "unix://")
	if !ok {
		d.Errorf(key, "%s %q: only a unix socket is supported, written unix:///path/to/socket", key, v)
		return
	}
	if !filepath.IsAbs(p) {
		d.Errorf(key, "%s %q: the socket path must be absolute (unix:///path/to/socket)", key, v)
		return
	}
	if !template {
		return
	}
	n := 0
	for i := 0; i < len(p); i++ {
		if p[i] != '%' {
			continue
		}
		if i+1 < len(p) && p[i+1] == 'd' {
			n++
		} else if i+1 >= len(p) || p[i+1] != '%' {
			d.Errorf(key, "%s %q: only %%d (the UID) and %%%% may follow %%", key, v)
			return
		}
		i++
	}
	if n != 1 {
		d.Errorf(key, "%s %q must contain %%d, the user's UID, exactly once", key, v)
	}
}
