//go:build !sigil_omit_docker

package agent_test

import (
	"os"
	"strings"
	"testing"
)

// TestContainerExampleConf: the commented WorkloadAttestor "docker" of
// conf/agent/agent.conf parses when uncommented beside unix, and so do its
// commented matchers.
func TestContainerExampleConf(t *testing.T) {
	src, err := os.ReadFile("../../../conf/agent/agent.conf")
	if err != nil {
		t.Fatal(err)
	}
	s := uncomment(t, string(src), `WorkloadAttestor "docker" {`, "")
	p, err := parse(t, s)
	if err != nil {
		t.Fatalf("%v\n%s", err, s)
	}
	if got := strings.Join(p.Names(), ", "); !strings.Contains(got, `WorkloadAttestor "unix", WorkloadAttestor "docker"`) {
		t.Fatalf("plugins %s", got)
	}
	s = strings.Replace(s, `# use_new_container_locator = false`, `use_new_container_locator = false`, 1)
	s = strings.Replace(s, `# container_id_cgroup_matchers =`, `container_id_cgroup_matchers =`, 1)
	if _, err := parse(t, s); err != nil {
		t.Fatalf("with matchers: %v\n%s", err, s)
	}
}
