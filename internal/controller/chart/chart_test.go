// Package chart tests the Helm chart deploy/helm/sigil and the plain
// manifests rendered from it (deploy/manifests/sigil.yaml): helm lint,
// the manifests are what deploy/render.sh writes, the chart's CRDs are the
// controller's, the configurations it writes load in sigil-server,
// sigil-agent and sigil-controller, and every rendered object is accepted
// by a real kube-apiserver v1.37 (server-side apply, dry run), as rendered
// with the defaults and with the spire-on-kubernetes seed's values file.
//
// It needs helm, built once per machine by tools/helm/build.sh (.ci/run
// does), and skips saying so when it is missing, except in CI.
package chart

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/controller/api/v1alpha1"
	"github.com/sigil-spiffe/sigil/internal/controller/crds"
	"github.com/sigil-spiffe/sigil/internal/controller/manager"
	"github.com/sigil-spiffe/sigil/internal/controller/render"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/kubetest"
)

func TestMain(m *testing.M) {
	manager.SetProcessLoggers(slog.New(slog.DiscardHandler)) // once, before any client logs
	os.Exit(kubetest.Main(m))
}

const (
	root      = "../../.."
	chartDir  = root + "/deploy/helm/sigil"
	manifests = root + "/deploy/manifests/sigil.yaml"
	// The Kubernetes release the chart is rendered and checked for.
	kubeVersion = "1.37.2"
)

// helm finds the binary tools/helm/build.sh builds.
func helm(t *testing.T) string {
	t.Helper()
	mod, err := os.ReadFile(root + "/tools/helm/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	version := ""
	for _, line := range strings.Split(string(mod), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "helm.sh/helm/v3" {
			version = f[1]
		}
	}
	if version == "" {
		t.Fatal("no helm.sh/helm/v3 version in tools/helm/go.mod")
	}
	bin := os.Getenv("SIGIL_HELM")
	if bin == "" {
		cache := os.Getenv("SIGIL_CACHE")
		if cache == "" {
			home, _ := os.UserHomeDir()
			cache = filepath.Join(home, ".cache", "sigil")
		}
		bin = filepath.Join(cache, "helm", version, "helm")
	}
	if _, err := os.Stat(bin); err != nil {
		msg := fmt.Sprintf("no helm at %s (build it once per machine with tools/helm/build.sh)", bin)
		if ci := os.Getenv("CI"); ci != "" && ci != "false" {
			t.Fatal(msg + " (CI is set: .ci/run builds it)")
		}
		t.Skip(msg)
	}
	return bin
}

func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", filepath.Base(name), strings.Join(args, " "), err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.Bytes()
}

// helmTemplate is deploy/render.sh's helm template, plus extra arguments.
func helmTemplate(t *testing.T, extra ...string) []byte {
	t.Helper()
	args := append([]string{"template", "sigil", chartDir, "--namespace", "spire-system", "--kube-version", kubeVersion, "--include-crds", "--set", "namespace.create=true"}, extra...)
	return run(t, helm(t), args...)
}

func TestLint(t *testing.T) {
	out := run(t, helm(t), "lint", "--strict", "--kube-version", kubeVersion, chartDir)
	if !bytes.Contains(out, []byte("0 chart(s) failed")) {
		t.Errorf("helm lint:\n%s", out)
	}
}

// The committed manifests are the chart's rendering.
func TestRenderedManifestsUpToDate(t *testing.T) {
	want := append([]byte("# Rendered from deploy/helm/sigil by deploy/render.sh: do not edit.\n"), helmTemplate(t)...)
	got, err := os.ReadFile(manifests)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("deploy/manifests/sigil.yaml is not the chart's rendering: run deploy/render.sh")
	}
}

// The chart's CRDs are byte for byte the controller's.
func TestCRDsAreTheControllers(t *testing.T) {
	files := crds.Files()
	if len(files) != 3 {
		t.Fatalf("%d CRDs", len(files))
	}
	chart, err := filepath.Glob(chartDir + "/crds/*.yaml")
	if err != nil || len(chart) != len(files) {
		t.Fatalf("chart CRDs %q (%v), want %d", chart, err, len(files))
	}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(chartDir, "crds", f.Name))
		if err != nil {
			t.Error(err)
			continue
		}
		if !bytes.Equal(b, f.YAML) {
			t.Errorf("deploy/helm/sigil/crds/%s differs from internal/controller/crds/%s", f.Name, f.Name)
		}
	}
}

type object = map[string]any

func decode(t *testing.T, b []byte) []object {
	t.Helper()
	var out []object
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		var o object
		if err := yaml.Unmarshal(doc, &o); err != nil {
			t.Fatal(err)
		}
		if o != nil {
			out = append(out, o)
		}
	}
}

func str(o object, path ...string) string {
	var v any = o
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return ""
		}
		v = m[p]
	}
	s, _ := v.(string)
	return s
}

// configMapData returns data[key] of the ConfigMap name.
func configMapData(t *testing.T, objs []object, name, key string) string {
	t.Helper()
	for _, o := range objs {
		if str(o, "kind") == "ConfigMap" && str(o, "metadata", "name") == name {
			if v := str(o, "data", key); v != "" {
				return v
			}
		}
	}
	t.Fatalf("no ConfigMap %s with %s", name, key)
	return ""
}

// The configurations the chart writes load in the binaries (the same
// parsers and checks as their start-up), with the defaults and with the
// seed's values.
func TestConfigsLoad(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		td   string
	}{
		{"defaults", nil, "example.org"},
		{"seed values", []string{"--values", "testdata/seed-spire-values.yaml"}, "prod.example.com"},
		{"className, postgres", []string{"--set", "controller.className=scm,controller.watchClassless=true,server.dataStore.databaseType=postgres,server.dataStore.connectionString=dbname=sigil host=db"}, "example.org"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := decode(t, helmTemplate(t, tc.args...))
			srv, err := config.ParseServer("server.conf", []byte(configMapData(t, objs, "sigil-server", "server.conf")))
			if err != nil {
				t.Fatalf("server.conf: %v", err)
			}
			if srv.TrustDomain.Name() != tc.td {
				t.Errorf("server trust domain %s, want %s", srv.TrustDomain, tc.td)
			}
			ag, err := config.ParseAgent("agent.conf", []byte(configMapData(t, objs, "sigil-agent", "agent.conf")))
			if err != nil {
				t.Fatalf("agent.conf: %v", err)
			}
			if ag.TrustDomain.Name() != tc.td || ag.ServerAddress != "sigil-server.spire-system.svc" {
				t.Errorf("agent trust domain %s, server %s", ag.TrustDomain, ag.ServerAddress)
			}
			c, err := manager.ParseConfig([]byte(configMapData(t, objs, "sigil-server", "controller.yaml")))
			if err != nil {
				t.Fatalf("controller.yaml: %v", err)
			}
			if c.TrustDomain != tc.td || c.TrustBundleConfigMap == nil || c.TrustBundleConfigMap.Name != "sigil-bundle" || len(c.Warnings()) != 0 {
				t.Errorf("controller config %+v, warnings %q", c, c.Warnings())
			}
		})
	}
}

// resource maps a kind to its API path.
var resource = map[string]struct {
	group, plural string
	namespaced    bool
}{
	"Namespace":                {"/api/v1", "namespaces", false},
	"ServiceAccount":           {"/api/v1", "serviceaccounts", true},
	"ConfigMap":                {"/api/v1", "configmaps", true},
	"Service":                  {"/api/v1", "services", true},
	"StatefulSet":              {"/apis/apps/v1", "statefulsets", true},
	"DaemonSet":                {"/apis/apps/v1", "daemonsets", true},
	"ClusterRole":              {"/apis/rbac.authorization.k8s.io/v1", "clusterroles", false},
	"ClusterRoleBinding":       {"/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", false},
	"Role":                     {"/apis/rbac.authorization.k8s.io/v1", "roles", true},
	"RoleBinding":              {"/apis/rbac.authorization.k8s.io/v1", "rolebindings", true},
	"CSIDriver":                {"/apis/storage.k8s.io/v1", "csidrivers", false},
	"CustomResourceDefinition": {"/apis/apiextensions.k8s.io/v1", "customresourcedefinitions", false},
}

// applyDryRun sends obj to the API server as a server-side apply with
// dryRun=All: validated and admitted like a real apply, stored nowhere.
func applyDryRun(ctx context.Context, s *kubetest.Server, obj object) error {
	kind := str(obj, "kind")
	r, ok := resource[kind]
	if !ok {
		return fmt.Errorf("kind %s: not in the test's table", kind)
	}
	path := r.group
	if r.namespaced {
		path += "/namespaces/" + str(obj, "metadata", "namespace")
	}
	path += "/" + r.plural + "/" + str(obj, "metadata", "name") + "?dryRun=All&fieldManager=sigil-chart-test&force=true&fieldValidation=Strict"
	body, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPatch, s.URL+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/apply-patch+yaml")
	req.Header.Set("Authorization", "Bearer "+s.Token)
	resp, err := s.HTTPClient().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: HTTP %d: %s", kind, str(obj, "metadata", "name"), resp.StatusCode, b)
	}
	if w := resp.Header.Values("Warning"); len(w) > 0 {
		return fmt.Errorf("%s %s: warnings %q", kind, str(obj, "metadata", "name"), w)
	}
	return nil
}

// Every object of the rendered manifests, and of the chart rendered with
// the seed's values and with the optional parts off, is valid for
// Kubernetes 1.37: a real kube-apiserver accepts it (server-side apply,
// dry run, strict field validation, no warnings).
func TestManifestsApplyToKubeAPIServer(t *testing.T) {
	b, err := os.ReadFile(manifests)
	if err != nil {
		t.Fatal(err)
	}
	s := kubetest.Shared(t)
	ctx := context.Background()
	// Namespaced objects are admitted only into an existing namespace.
	if err := s.Do(ctx, http.MethodPost, "/api/v1/namespaces", object{"metadata": object{"name": "spire-system"}}, nil); err != nil && !strings.Contains(err.Error(), "already exists") {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		objs []object
	}{
		{"deploy/manifests/sigil.yaml", decode(t, b)},
		{"seed values", decode(t, helmTemplate(t, "--values", "testdata/seed-spire-values.yaml"))},
		{"no controller, no CSI driver", decode(t, helmTemplate(t, "--set", "controller.enabled=false,csiDriver.enabled=false"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kinds := map[string]int{}
			for _, o := range tc.objs {
				kinds[str(o, "kind")]++
				if err := applyDryRun(ctx, s, o); err != nil {
					t.Error(err)
				}
			}
			t.Logf("%d objects: %v", len(tc.objs), kinds)
			if kinds["StatefulSet"] != 1 || kinds["DaemonSet"] == 0 || kinds["CustomResourceDefinition"] != 3 {
				t.Errorf("objects %v: want the server StatefulSet, the DaemonSets and 3 CRDs", kinds)
			}
		})
	}
}

// The README's Kubernetes commands: the chart renders with its helm
// install flags, and its ClusterSPIFFEID is a valid resource (strict
// decoding, the controller's parser) that the API server accepts.
func TestREADMEKubernetesBlock(t *testing.T) {
	b, err := os.ReadFile(root + "/README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "\n### Kubernetes\n")
	if !ok {
		t.Fatal("README.md has no ### Kubernetes section")
	}
	_, block, ok := strings.Cut(sec, "```sh\n")
	block, _, ok2 := strings.Cut(block, "```\n")
	if !ok || !ok2 {
		t.Fatal("no sh block in README's Kubernetes section")
	}
	install, manifest, ok := strings.Cut(block, "kubectl apply -f - <<'EOF'\n")
	manifest, _, ok2 = strings.Cut(manifest, "\nEOF\n")
	if !ok || !ok2 || !strings.Contains(install, "helm install sigil deploy/helm/sigil ") {
		t.Fatalf("README block not as expected:\n%s", block)
	}
	// helm install's --set flags, given to helm template.
	var sets []string
	for _, f := range strings.Fields(strings.ReplaceAll(install, "\\\n", " ")) {
		if strings.HasPrefix(f, "global.") {
			sets = append(sets, "--set", f)
		}
	}
	if len(sets) != 4 {
		t.Fatalf("--set flags %q", sets)
	}
	objs := decode(t, helmTemplate(t, sets...))
	if _, err := config.ParseServer("server.conf", []byte(configMapData(t, objs, "sigil-server", "server.conf"))); err != nil {
		t.Fatal(err)
	}

	var csid v1alpha1.ClusterSPIFFEID
	if err := yaml.UnmarshalStrict([]byte(manifest), &csid); err != nil {
		t.Fatalf("README ClusterSPIFFEID: %v", err)
	}
	if csid.Kind != "ClusterSPIFFEID" || csid.APIVersion != "spire.spiffe.io/v1alpha1" {
		t.Fatalf("README resource %s %s", csid.APIVersion, csid.Kind)
	}
	if _, err := render.ParseClusterSPIFFEID(&csid.Spec); err != nil {
		t.Fatalf("README ClusterSPIFFEID: %v", err)
	}
	// The API server accepts it with the CRDs applied.
	s := kubetest.Shared(t)
	ctx := context.Background()
	for _, f := range crds.Files() {
		for _, o := range decode(t, f.YAML) {
			if err := applyDryRun(ctx, s, o); err != nil {
				t.Fatal(err)
			}
			if err := s.Do(ctx, http.MethodPost, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", o, nil); err != nil && !strings.Contains(err.Error(), "already exists") {
				t.Fatal(err)
			}
		}
	}
	var obj object
	if err := yaml.Unmarshal([]byte(manifest), &obj); err != nil {
		t.Fatal(err)
	}
	err = testutil.Poll(30*time.Second, 50*time.Millisecond, func() (bool, error) {
		err := s.Do(ctx, http.MethodPost, "/apis/spire.spiffe.io/v1alpha1/clusterspiffeids?dryRun=All&fieldValidation=Strict", obj, nil)
		var se *kubetest.StatusError
		if errors.As(err, &se) && se.Code == http.StatusNotFound {
			return false, nil // the CRD is not served yet
		}
		return err == nil, err
	})
	if err != nil {
		t.Fatalf("README ClusterSPIFFEID refused by the API server: %v", err)
	}
}
