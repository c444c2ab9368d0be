package docker

import (
	"strings"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/config"
)

func parse(data map[string]any) (Config, error) {
	return ParseConfig(config.NewPlugin("WorkloadAttestor", "docker", data).Data())
}

func TestParseConfig(t *testing.T) {
	c, err := parse(map[string]any{
		"docker_socket_path": "unix:///run/docker.sock", "docker_version": "1.41",
		"use_new_container_locator": true, "verbose_container_locator_logs": true,
		"podman_socket_path": "unix:///run/podman/p.sock", "podman_socket_path_template": "unix:///run/u/%d/p%%.sock",
		"proc_dir": "/host/proc",
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.SocketPath != "unix:///run/docker.sock" || c.Version != "1.41" || !c.VerboseLocatorLogs || c.Matchers != nil ||
		c.PodmanSocketPath != "unix:///run/podman/p.sock" || c.PodmanSocketTemplate != "unix:///run/u/%d/p%%.sock" || c.ProcDir != "/host/proc" {
		t.Fatalf("%+v", c)
	}
	if c, err := parse(map[string]any{}); err != nil || c != (Config{}) {
		t.Fatalf("empty: %+v, %v", c, err)
	}
	c, err = parse(map[string]any{"container_id_cgroup_matchers": []string{"/docker/<id>"}, "use_new_container_locator": false})
	if err != nil || c.Matchers == nil {
		t.Fatalf("matchers: %+v, %v", c, err)
	}
	for _, tc := range []struct {
		data map[string]any
		want string
	}{
		{map[string]any{"docker_socket_path": "/var/run/docker.sock"}, `only a unix socket is supported, written unix:///path/to/socket`},
		{map[string]any{"docker_socket_path": "tcp://127.0.0.1:2375"}, `only a unix socket is supported`},
		{map[string]any{"docker_socket_path": "unix://docker.sock"}, `the socket path must be absolute`},
		{map[string]any{"podman_socket_path_template": "unix:///run/user/podman.sock"}, `must contain %d, the user's UID, exactly once`},
		{map[string]any{"podman_socket_path_template": "unix:///run/%d/%d.sock"}, `exactly once`},
		{map[string]any{"podman_socket_path_template": "unix:///run/%s/p.sock"}, `only %d (the UID) and %% may follow %`},
		{map[string]any{"docker_version": "v1.41"}, `docker_version "v1.41" is not an Engine API version`},
		{map[string]any{"docker_host": "npipe:////./pipe/docker_engine"}, `docker_host is SPIRE's Windows setting`},
		{map[string]any{"container_id_cgroup_matchers": []string{"/docker/<id>"}}, `need use_new_container_locator = false (the new locator, the default`},
		// The edge seed's docker block sets both.
		{map[string]any{"container_id_cgroup_matchers": []string{"/docker/([^/]+)"}, "use_new_container_locator": true}, `need use_new_container_locator = false: the new locator`},
		{map[string]any{"container_id_cgroup_matchers": []string{"/a/<id>", "/*/<id>"}, "use_new_container_locator": false}, `container_id_cgroup_matchers: patterns "/a/<id>" and "/*/<id>" are ambiguous`},
		{map[string]any{"sigstore": map[string]any{"rekor_url": "x"}}, `unsupported`},
		{map[string]any{"container_discovery_interval": "30s"}, `unknown key "container_discovery_interval"`},
		{map[string]any{"proc_dir": "proc"}, `proc_dir "proc" is not an absolute, clean path`},
	} {
		_, err := parse(tc.data)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), `WorkloadAttestor "docker"`) {
			t.Errorf("%v: error %v, want one containing %q", tc.data, err, tc.want)
		}
	}
}
