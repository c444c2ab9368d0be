package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// omitted are, per omit tag, the packages and third-party modules besides
// internal/attest/node/<name> that only that plugin needs, and that a
// build with the tag must leave out of sigil-server: nothing of go-tpm
// without the TPM (its attestor, the tpm key manager of the dev command's
// agent, tpmdev), whichever path (the server's catalog, the agent's
// catalog linked by `sigil-server dev`, the selector types of the CLI's
// entry checks) would bring it.
var omitted = map[string][]string{
	"tpm":      {"github.com/sigil-spiffe/sigil/internal/keys/tpmkey", "github.com/sigil-spiffe/sigil/internal/tpmdev", "github.com/google/go-tpm"},
	"k8s_psat": {"github.com/sigil-spiffe/sigil/internal/kubeapi", "gopkg.in/yaml.v3"},
	// The AWS SDK, which only aws_iid's server half (awsiid/awsapi) uses.
	"aws_iid": {"github.com/aws"},
	// Google credentials (oauth2/google and the metadata client), which
	// only gcp_iit's Compute API client (gcpiit/computeapi) uses.
	"gcp_iit": {"golang.org/x/oauth2/google", "cloud.google.com/go/compute/metadata"},
}

// TestServerLinksNoKubernetesClient: sigil-server talks to Kubernetes API
// servers (k8s_psat's TokenReview, pods, nodes) with internal/kubeapi,
// net/http and JSON, and links no Kubernetes client library (client-go,
// apimachinery, the API types): they would triple its compile time for
// three requests. The check holds for the default build, which links
// kubeapi (so the check can fail if kubeapi grew such an import).
func TestServerLinksNoKubernetesClient(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "github.com/sigil-spiffe/sigil/internal/kubeapi") {
		t.Fatal("sigil-server does not link internal/kubeapi: the check would prove little")
	}
	for _, d := range deps {
		for _, f := range []string{"k8s.io", "sigs.k8s.io"} {
			if d == f || strings.HasPrefix(d, f+"/") {
				t.Errorf("sigil-server links %s", d)
			}
		}
	}
}

// TestOmitTagsLeaveAttestorsOut: every plugin file of the server's catalog
// with a `//go:build !sigil_omit_<name>` line is left out by that tag, and
// with it the plugin's package (internal/attest/node/<name without
// underscores>: k8s_psat's is k8spsat) and what only it needs (omitted):
// a device or minimal build links none of its code. Without the tags the packages are linked, so the check can fail.
func TestOmitTagsLeaveAttestorsOut(t *testing.T) {
	files, err := filepath.Glob("../../internal/catalog/server/*.go")
	if err != nil {
		t.Fatal(err)
	}
	tagLine := regexp.MustCompile(`(?m)^//go:build !sigil_omit_([a-z0-9_]+)$`)
	var names []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if m := tagLine.FindSubmatch(src); m != nil {
			names = append(names, string(m[1]))
		}
	}
	if !slices.Contains(names, "tpm") {
		t.Fatalf("no omittable tpm attestor among %q: the check would prove little", names)
	}
	const prefix = "github.com/sigil-spiffe/sigil/internal/attest/node/"
	deps := func(tags string) []string {
		t.Helper()
		out, err := exec.Command("go", "list", "-deps", "-tags", tags, ".").CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps -tags %q: %v\n%s", tags, err, out)
		}
		return strings.Fields(string(out))
	}
	under := func(dep, pkg string) bool { return dep == pkg || strings.HasPrefix(dep, pkg+"/") }
	full := deps("")
	var omit []string
	for _, n := range names {
		omit = append(omit, "sigil_omit_"+n)
		for _, pkg := range append([]string{prefix + strings.ReplaceAll(n, "_", "")}, omitted[n]...) {
			if !slices.ContainsFunc(full, func(d string) bool { return under(d, pkg) }) {
				t.Errorf("the default build does not link %s: the check would prove nothing", pkg)
			}
		}
	}
	// Each tag alone, and all of them.
	check := func(tags []string, names []string) {
		t.Helper()
		for _, dep := range deps(strings.Join(tags, ",")) {
			for _, n := range names {
				for _, pkg := range append([]string{prefix + strings.ReplaceAll(n, "_", "")}, omitted[n]...) {
					if under(dep, pkg) {
						t.Errorf("built with -tags %s, sigil-server still links %s", strings.Join(tags, ","), dep)
					}
				}
			}
		}
	}
	for i, n := range names {
		check(omit[i:i+1], []string{n})
	}
	check(omit, names)
}
