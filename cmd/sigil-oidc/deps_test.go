package main

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/sigil-spiffe/sigil/"

// forbidden are what sigil-oidc must not link: each entry forbids a
// package path and everything below it. It reads public keys through the
// Workload API, the server API or a file: no datastore, no server code, no
// Kubernetes or telemetry stack.
var forbidden = []string{
	"database/sql",
	"modernc.org",
	"github.com/jackc",
	"github.com/lib/pq",
	"github.com/mattn/go-sqlite3",
	"k8s.io",
	"sigs.k8s.io",
	module + "internal/server",
	module + "internal/datastore",
	module + "internal/ca",
	module + "internal/agent",
	"github.com/Masterminds",
	"github.com/google/go-tpm",
}

func under(dep, pkg string) bool { return dep == pkg || strings.HasPrefix(dep, pkg+"/") }

// TestOIDCProviderLinksNoDatastore: `go list -deps` of sigil-oidc holds
// none of the forbidden packages.
func TestOIDCProviderLinksNoDatastore(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 50 {
		t.Fatalf("go list -deps returned only %d packages; the check would prove nothing", len(deps))
	}
	for _, dep := range deps {
		for _, f := range forbidden {
			if under(dep, f) {
				t.Errorf("sigil-oidc links %s (forbidden: %s)", dep, f)
			}
		}
	}
}
