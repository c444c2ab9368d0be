package main

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/sigil-spiffe/sigil/"

// kubeClients are what only the controller may link: the Kubernetes client
// libraries (they triple compile times and weigh tens of MiB), and the
// controller's own packages, which link them.
var kubeClients = []string{
	"k8s.io/client-go",
	"sigs.k8s.io/controller-runtime",
	"k8s.io/apiextensions-apiserver",
	module + "internal/controller",
}

// crdsPkg is free for all: it embeds the CRD manifests and imports nothing
// of Kubernetes (tests apply the CRDs from it).
const crdsPkg = module + "internal/controller/crds"

// controllerPkgs may link them.
var controllerPkgs = []string{module + "cmd/sigil-controller", module + "internal/controller"}

func under(dep, pkg string) bool { return dep == pkg || strings.HasPrefix(dep, pkg+"/") }

// TestOnlyTheControllerLinksKubeClients: no package of the module other
// than sigil-controller's, nor any of their tests, imports client-go,
// controller-runtime or internal/controller, directly or not: the server,
// the agent and the CLI stay free of them.
func TestOnlyTheControllerLinksKubeClients(t *testing.T) {
	out, err := exec.Command("go", "list", "-test", "-f", `{{.ImportPath}}{{range .Deps}} {{.}}{{end}}`, module+"...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 100 {
		t.Fatalf("go list returned %d packages: the check would prove nothing", len(lines))
	}
	controllerLinks := false
	for _, line := range lines {
		f := strings.Fields(line)
		pkg := strings.TrimSuffix(f[0], ".test")
		if i := strings.Index(pkg, " "); i >= 0 {
			pkg = pkg[:i]
		}
		mine := false
		for _, c := range controllerPkgs {
			mine = mine || under(pkg, c)
		}
		for _, dep := range f[1:] {
			if dep == crdsPkg {
				continue
			}
			for _, k := range kubeClients {
				if !under(dep, k) {
					continue
				}
				if mine {
					controllerLinks = controllerLinks || (pkg == module+"cmd/sigil-controller" && k == "sigs.k8s.io/controller-runtime")
					continue
				}
				t.Errorf("%s links %s (only sigil-controller may link %s)", f[0], dep, k)
			}
		}
	}
	// crds itself must stay free of Kubernetes code for that.
	for _, line := range lines {
		if f := strings.Fields(line); f[0] == crdsPkg {
			for _, dep := range f[1:] {
				if under(dep, "k8s.io") || under(dep, "sigs.k8s.io") {
					t.Errorf("%s links %s: it must import nothing of Kubernetes", crdsPkg, dep)
				}
			}
		}
	}
	if !controllerLinks {
		t.Error("sigil-controller does not link controller-runtime: the check would prove nothing")
	}
}
