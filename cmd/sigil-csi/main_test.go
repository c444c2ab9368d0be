package main

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/sigil-spiffe/sigil/"

// forbidden are what the CSI node plugin must not link (DESIGN.md): it
// mounts a directory and answers kubelet, nothing more.
var forbidden = []string{
	"database/sql", "modernc.org", "github.com/jackc",
	"k8s.io", "sigs.k8s.io", "github.com/aws",
	module + "internal/server", module + "internal/datastore", module + "internal/ca", module + "internal/agent",
	"github.com/Masterminds", "github.com/google/go-tpm",
}

func TestCSIDriverLinksLittle(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 50 || !strings.Contains(string(out), "github.com/container-storage-interface/spec/lib/go/csi") {
		t.Fatalf("go list -deps returned %d packages without the CSI spec; the check would prove nothing", len(deps))
	}
	for _, dep := range deps {
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, f+"/") {
				t.Errorf("sigil-csi links %s (forbidden: %s)", dep, f)
			}
		}
	}
}

// TestRunRefusesBadFlags: a missing socket directory or node name stops
// start-up with the flag to set.
func TestRunRefusesBadFlags(t *testing.T) {
	env := func(k string) string { return map[string]string{"MY_NODE_NAME": "node-1"}[k] }
	for _, tc := range []struct {
		args []string
		env  func(string) string
		want string
	}{
		{nil, env, "-workload-api-socket-dir"},
		{[]string{"-workload-api-socket-dir", t.TempDir()}, func(string) string { return "" }, "node ID is required (-node-id"},
		{[]string{"-workload-api-socket-dir", "/nonexistent"}, env, "no such file"},
		{[]string{"-log-level", "LOUD"}, env, "LOUD"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), tc.args, tc.env, &stdout, &stderr); code == 0 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%q: exit %d, stderr %q, want %q", tc.args, code, stderr.String(), tc.want)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"version"}, env, &stdout, &stderr); code != 0 || stdout.Len() == 0 {
		t.Fatalf("version: %d %q %q", code, stdout.String(), stderr.String())
	}
}
