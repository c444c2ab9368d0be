package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestAgentStaysSmall keeps the device binary free of the server's datastore
// drivers, server packages and Kubernetes code.
func TestAgentStaysSmall(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	// Each entry forbids a package path and everything below it.
	forbidden := []string{
		"database/sql",
		"modernc.org",
		"github.com/jackc",
		"github.com/lib/pq",
		"github.com/mattn/go-sqlite3",
		"k8s.io",
		"sigs.k8s.io",
		"github.com/sigil-spiffe/sigil/internal/server",
		"github.com/sigil-spiffe/sigil/internal/datastore",
		"github.com/sigil-spiffe/sigil/internal/ca",
		// agent_path_template functions: only the server renders agent IDs.
		"github.com/Masterminds/",
		"github.com/sigil-spiffe/sigil/internal/attest/node/agentpath",
	}
	deps := strings.Fields(string(out))
	if len(deps) < 50 {
		t.Fatalf("go list -deps returned only %d packages; the check would prove nothing", len(deps))
	}
	for _, dep := range deps {
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, f+"/") {
				t.Errorf("sigil-agent links %s (forbidden: %s)", dep, f)
			}
		}
	}
}
