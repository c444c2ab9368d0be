package main

import (
	"go/build/constraint"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/sigil-spiffe/sigil/"

// forbidden are what no agent build links: each entry forbids a package
// path and everything below it.
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
	// agent_path_template's engine and its sprig functions (~650 KiB):
	// only the server renders agent IDs.
	module + "internal/attest/node/agentpath",
	"github.com/Masterminds",
	// k8s_psat's kubeconfig reader and its YAML decoder: only the server
	// reads kubeconfig files (the agent half sends a token).
	module + "internal/kubeapi/kubeconfig",
	"gopkg.in/yaml.v3",
	// The systemd workload attestor speaks D-Bus itself (+60 KiB); the
	// library, a test dependency (internal/testutil/fakesystemd), costs
	// +280 KiB.
	"github.com/godbus",
	// Cloud SDKs: the cloud node attestors' agent halves are plain HTTP;
	// their server halves' API clients live in packages only the server
	// links (awsiid/awsapi, gcpiit/computeapi, azuremsi/armapi,
	// azureimds/armimds, azurearm).
	"github.com/aws",
	"cloud.google.com",
	"google.golang.org/api",
	"github.com/Azure",
	"golang.org/x/oauth2",
	module + "internal/attest/node/awsiid/awsapi",
	module + "internal/attest/node/gcpiit/computeapi",
	module + "internal/attest/node/azuremsi/armapi",
	module + "internal/attest/node/azureimds/armimds",
	module + "internal/azurearm",
	// profiling_* (net/http/pprof and the dumps, internal/profiling) is
	// the server's only: it measured +499,712 bytes on the release build
	// (15,405,218 -> 15,904,930, 2026-12-06), past the 15 MiB budget; the
	// agent refuses the keys.
	"net/http/pprof",
	module + "internal/profiling",
	// PKCS #7 is verified by the server halves only; the agent links the
	// package (aws_iid's and azure_imds's packages hold both halves) but
	// none of its verification code (go tool nm).
}

// documented are the omit tags of the README's device build, with the
// packages each must leave out of the agent: its plugins' packages and the
// third-party modules only they need. The checks hold whether or not the
// plugin is in the agent's catalog yet.
var documented = map[string][]string{
	"sigil_omit_tpm":     {module + "internal/attest/node/tpm", module + "internal/keys/tpmkey", module + "internal/tpmdev", "github.com/google/go-tpm"},
	"sigil_omit_x509pop": {module + "internal/attest/node/x509pop"},
	"sigil_omit_docker":  {module + "internal/attest/workload/docker"},
	// k8s_psat's package holds the server half too, with its API client
	// (kubeapi; the kubeconfig reader is the server's, forbidden above).
	"sigil_omit_k8s_psat":  {module + "internal/attest/node/k8spsat", module + "internal/kubeapi"},
	"sigil_omit_systemd":   {module + "internal/attest/workload/systemd"},
	"sigil_omit_k8s":       {module + "internal/attest/workload/k8s"},
	"sigil_omit_aws_iid":   {module + "internal/attest/node/awsiid"},
	"sigil_omit_gcp_iit":   {module + "internal/attest/node/gcpiit"},
	"sigil_omit_azure_msi": {module + "internal/attest/node/azuremsi"},
	// azure_imds's package holds the server half too; PKCS #7 is the
	// server halves' (aws_iid links it as well).
	"sigil_omit_azure_imds": {module + "internal/attest/node/azureimds"},
}

func under(dep, pkg string) bool { return dep == pkg || strings.HasPrefix(dep, pkg+"/") }

// deps is `go list -deps` of the agent with the build tags.
func deps(t *testing.T, tags ...string) []string {
	t.Helper()
	args := []string{"list", "-deps"}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	d := strings.Fields(string(out))
	if len(d) < 50 {
		t.Fatalf("go %s returned only %d packages; the check would prove nothing", strings.Join(args, " "), len(d))
	}
	return d
}

// TestAgentStaysSmall keeps the device binary free of the server's datastore
// drivers, server packages and Kubernetes code, in the default build and in
// the minimal one.
func TestAgentStaysSmall(t *testing.T) {
	for _, tags := range [][]string{nil, minimalTags()} {
		for _, dep := range deps(t, tags...) {
			for _, f := range forbidden {
				if under(dep, f) {
					t.Errorf("sigil-agent (tags %q) links %s (forbidden: %s)", tags, dep, f)
				}
			}
		}
	}
}

// omittable is a plugin file of the agent's catalog that a build tag
// leaves out.
type omittable struct {
	file string
	tag  string   // sigil_omit_<name>
	pkgs []string // what it imports that the always-built files do not: the plugin's own packages
}

// catalogPlugins reads the agent catalog's files: those with a
// `//go:build !sigil_omit_<name>` constraint are omittable, and the
// packages only they import are their plugins'.
func catalogPlugins(t *testing.T) []omittable {
	t.Helper()
	files, err := filepath.Glob("../../internal/catalog/agent/*.go")
	if err != nil {
		t.Fatal(err)
	}
	core := map[string]bool{}
	var out []omittable
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		ast, err := parser.ParseFile(token.NewFileSet(), f, src, parser.ImportsOnly|parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		var imports []string
		for _, is := range ast.Imports {
			p, _ := strconv.Unquote(is.Path.Value)
			imports = append(imports, p)
		}
		tag := ""
		for _, line := range strings.Split(string(src), "\n") {
			if !constraint.IsGoBuild(line) {
				continue
			}
			expr, err := constraint.Parse(line)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			not, ok := expr.(*constraint.NotExpr)
			tagExpr, ok2 := any(nil), false
			if ok {
				tagExpr, ok2 = not.X.(*constraint.TagExpr)
			}
			if !ok || !ok2 || !strings.HasPrefix(tagExpr.(*constraint.TagExpr).Tag, "sigil_omit_") {
				t.Fatalf("%s: build constraint %q: a catalog file is either always built or `//go:build !sigil_omit_<name>`", f, line)
			}
			tag = tagExpr.(*constraint.TagExpr).Tag
		}
		if tag == "" {
			for _, p := range imports {
				core[p] = true
			}
			continue
		}
		out = append(out, omittable{file: filepath.Base(f), tag: tag, pkgs: imports})
	}
	for i := range out {
		out[i].pkgs = slices.DeleteFunc(out[i].pkgs, func(p string) bool { return core[p] || !strings.HasPrefix(p, module) })
		if len(out[i].pkgs) == 0 {
			t.Fatalf("%s imports no plugin package of its own: the check would prove nothing", out[i].file)
		}
	}
	return out
}

// minimalTags are the tags of the minimal device build: every documented
// omit tag.
func minimalTags() []string {
	var tags []string
	for tag := range documented {
		tags = append(tags, tag)
	}
	slices.Sort(tags)
	return tags
}

func omitTags(t *testing.T, ps []omittable) []string {
	t.Helper()
	var tags []string
	for _, p := range ps {
		if !slices.Contains(tags, p.tag) {
			tags = append(tags, p.tag)
		}
	}
	slices.Sort(tags)
	return tags
}

// TestMinimalDeviceBuild proves what the minimal agent build (every
// sigil_omit_ tag, as the README documents them) links and what it does
// not: each tag leaves out its plugins' packages (those its catalog files
// import, and the modules only they need, such as go-tpm), which the
// default build links; the built-in core (join_token, disk and memory
// keys, the unix workload attestor) stays. The minimal build compiles.
func TestMinimalDeviceBuild(t *testing.T) {
	plugins := catalogPlugins(t)
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	tags := minimalTags()
	for _, tag := range tags {
		if !strings.Contains(string(readme), "`"+tag+"`") {
			t.Errorf("README.md does not document %s", tag)
		}
	}
	for _, tag := range omitTags(t, plugins) {
		if _, ok := documented[tag]; !ok {
			t.Errorf("the agent's catalog has a plugin under %s, which is not among the documented device-build tags", tag)
		}
	}
	full := deps(t)
	minimal := deps(t, tags...)
	leftOut := func(tag string, pkg string, tagged []string) {
		t.Helper()
		for _, d := range tagged {
			if under(d, pkg) {
				t.Errorf("built with -tags %s, the agent still links %s", tag, d)
			}
		}
	}
	// What the catalog's tagged files bring: linked by default, left out
	// by their tag alone and by the minimal build.
	for _, p := range plugins {
		tagged := deps(t, p.tag)
		for _, pkg := range p.pkgs {
			if !slices.Contains(full, pkg) {
				t.Errorf("%s: the default build does not link %s", p.file, pkg)
			}
			leftOut(p.tag, pkg, tagged)
			leftOut(strings.Join(tags, ","), pkg, minimal)
		}
	}
	// What each documented tag must leave out, catalog file or not; when
	// the plugin is in the catalog, the default build links it (so the
	// check can fail).
	for tag, pkgs := range documented {
		inCatalog := slices.ContainsFunc(plugins, func(p omittable) bool { return p.tag == tag })
		tagged := deps(t, tag)
		for _, pkg := range pkgs {
			if inCatalog && !slices.ContainsFunc(full, func(d string) bool { return under(d, pkg) }) && !strings.HasPrefix(pkg, module) {
				t.Errorf("the default build does not link %s although %s's plugin is in the catalog", pkg, tag)
			}
			leftOut(tag, pkg, tagged)
			leftOut(strings.Join(tags, ","), pkg, minimal)
		}
	}
	for _, core := range []string{
		module + "internal/catalog/agent",
		module + "internal/attest/workload/unix",
		module + "internal/agent/manager",
		module + "internal/keys",
	} {
		if !slices.Contains(minimal, core) {
			t.Errorf("the minimal build lacks %s", core)
		}
	}
	if testing.Short() {
		return
	}
	bin := filepath.Join(t.TempDir(), "sigil-agent")
	if out, err := exec.Command("go", "build", "-tags", strings.Join(tags, ","), "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build -tags %s: %v\n%s", strings.Join(tags, ","), err, out)
	}
}

// TestAgentLinksNoGoControlPlane: the agent serves Envoy SDS with the
// messages of internal/agent/sds/sdspb (Envoy's wire format, generated from
// go-control-plane's descriptors), not go-control-plane's packages, which
// would bring hundreds of messages it does not use (about 1.1 MiB).
func TestAgentLinksNoGoControlPlane(t *testing.T) {
	d := deps(t)
	for _, dep := range d {
		if under(dep, "github.com/envoyproxy") || under(dep, "github.com/cncf/xds") {
			t.Errorf("sigil-agent links %s", dep)
		}
	}
	if !slices.Contains(d, module+"internal/agent/sds/sdspb") {
		t.Error("sigil-agent does not link the SDS messages: the check would prove nothing")
	}
}
