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

// TestOmitTagsLeaveAttestorsOut: every plugin file of the server's catalog
// with a `//go:build !sigil_omit_<name>` line is left out by that tag, and
// with it the plugin's package (internal/attest/node/<name>): a device or
// minimal build links none of its code. Without the tags the packages are
// linked, so the check can fail.
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
	full := deps("")
	var omit []string
	for _, n := range names {
		omit = append(omit, "sigil_omit_"+n)
		if !slices.Contains(full, prefix+n) {
			t.Errorf("the default build does not link %s", prefix+n)
		}
	}
	for _, dep := range deps(strings.Join(omit, ",")) {
		for _, n := range names {
			if dep == prefix+n || strings.HasPrefix(dep, prefix+n+"/") {
				t.Errorf("built with -tags %s, sigil-server still links %s", strings.Join(omit, ","), dep)
			}
		}
	}
}
