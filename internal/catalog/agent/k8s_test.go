//go:build !sigil_omit_k8s

package agent_test

import (
	"os"
	"strings"
	"testing"
)

// TestSPIREQuickstartWithK8s: SPIRE's Kubernetes quickstart declares the
// k8s attestor on the read-only port (a quoted number, as HCL allows).
func TestSPIREQuickstartWithK8s(t *testing.T) {
	withK8s := strings.Replace(quickstart, `    WorkloadAttestor "unix" {`, `    WorkloadAttestor "k8s" {
        plugin_data {
            kubelet_read_only_port = "10255"
        }
    }
    WorkloadAttestor "unix" {`, 1)
	p, err := parse(t, withK8s)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(p.Names(), ", "); !strings.Contains(got, `WorkloadAttestor "k8s", WorkloadAttestor "unix"`) {
		t.Fatalf("plugins %s", got)
	}
}

// TestK8sExampleConf: the commented WorkloadAttestor "k8s" of
// conf/agent/agent.conf parses when uncommented beside unix.
func TestK8sExampleConf(t *testing.T) {
	src, err := os.ReadFile("../../../conf/agent/agent.conf")
	if err != nil {
		t.Fatal(err)
	}
	s := uncomment(t, string(src), `WorkloadAttestor "k8s" {`, "")
	p, err := parse(t, s)
	if err != nil {
		t.Fatalf("%v\n%s", err, s)
	}
	if got := strings.Join(p.Names(), ", "); !strings.Contains(got, `WorkloadAttestor "k8s"`) {
		t.Fatalf("plugins %s", got)
	}
}
