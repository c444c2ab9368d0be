package testutil

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

var build struct {
	mu   sync.Mutex
	dir  string
	bins map[string]string // package path -> binary
}

// ModuleRoot is the directory holding the module's go.mod.
func ModuleRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("testutil: cannot locate source file")
	}
	dir := filepath.Dir(file)
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("testutil: go.mod not found above " + filepath.Dir(file))
		}
		dir = parent
	}
}

// Build compiles the given main packages (module-relative, e.g.
// "./cmd/sigil-agent") and returns their binaries, in order. Each package
// is built at most once per test binary; the binaries live in one
// temporary directory that Cleanup removes.
func Build(t testing.TB, pkgs ...string) []string {
	t.Helper()
	bins, err := BuildPackages(pkgs...)
	if err != nil {
		t.Fatal(err)
	}
	return bins
}

// BuildPackages is Build without a testing.TB.
func BuildPackages(pkgs ...string) ([]string, error) {
	build.mu.Lock()
	defer build.mu.Unlock()
	if build.bins == nil {
		build.bins = map[string]string{}
	}
	root, err := ModuleRoot()
	if err != nil {
		return nil, err
	}
	if build.dir == "" {
		d, err := os.MkdirTemp("", "sigil-testbin-")
		if err != nil {
			return nil, fmt.Errorf("testutil: binaries dir: %w", err)
		}
		build.dir = d
	}
	var missing []string
	for _, p := range pkgs {
		if _, ok := build.bins[p]; !ok && !contains(missing, p) {
			missing = append(missing, p)
		}
	}
	// One directory per package keeps binaries with the same base name
	// apart.
	for _, p := range missing {
		out := filepath.Join(build.dir, strings.NewReplacer("/", "_", ".", "_").Replace(strings.Trim(p, "./")), filepath.Base(p))
		cmd := exec.Command("go", "build", "-o", out, p)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("testutil: go build %s: %w\n%s", p, err, b)
		}
		build.bins[p] = out
	}
	bins := make([]string, len(pkgs))
	for i, p := range pkgs {
		bins[i] = build.bins[p]
	}
	return bins, nil
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// Binaries returns the sigil-server and sigil-agent binaries, built once
// per test binary.
func Binaries(t testing.TB) (server, agent string) {
	t.Helper()
	b := Build(t, "./cmd/sigil-server", "./cmd/sigil-agent")
	return b[0], b[1]
}

// Cleanup removes the built binaries. Call it from TestMain after m.Run
// (see Main); without it they are left in the system temp directory.
func Cleanup() {
	build.mu.Lock()
	defer build.mu.Unlock()
	if build.dir != "" {
		_ = os.RemoveAll(build.dir)
		build.dir = ""
		build.bins = nil
	}
}

// Main runs the tests and then removes the built binaries:
//
//	func TestMain(m *testing.M) { os.Exit(testutil.Main(m)) }
func Main(m *testing.M) int {
	code := m.Run()
	Cleanup()
	return code
}
