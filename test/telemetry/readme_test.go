package telemetry

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	agentapp "github.com/sigil-spiffe/sigil/internal/app/agent"
	serverapp "github.com/sigil-spiffe/sigil/internal/app/server"
	"github.com/sigil-spiffe/sigil/internal/telemetry"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/inproc"
)

// readmeMetrics returns the metrics the README's Metrics section lists
// (first column of its tables: `name{label,label}`), by name, with their
// label names.
func readmeMetrics(t *testing.T) map[string][]string {
	t.Helper()
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	row := regexp.MustCompile("^\\| `(sigil_[a-z0-9_]+)(?:\\{([a-z_,]+)\\})?` \\|")
	out := map[string][]string{}
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "### Metrics":
			in = true
		case in && strings.HasPrefix(line, "#"):
			in = false
		case in:
			if m := row.FindStringSubmatch(line); m != nil {
				var labels []string
				if m[2] != "" {
					labels = strings.Split(m[2], ",")
				}
				out[m[1]] = labels
			}
		}
	}
	if len(out) == 0 {
		t.Fatal(`README: no metric rows under "### Metrics"`)
	}
	return out
}

// TestReadmeListsEveryMetric: every metric either binary registers is in
// the README's Metrics tables with its labels, and every metric listed
// there exists.
// registered returns the metrics sigil-server and sigil-agent register, by
// name, from an in-process server and agent.
func registered(t *testing.T) map[string]telemetry.Desc {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	dir := testutil.ShortTempDir(t)
	srv := inproc.RunServer(t, inproc.ServerConfig(td, filepath.Join(dir, "s"), filepath.Join(dir, "s.sock"), 0), nil, serverapp.Options{})
	agent := srv.StartAgent(t, filepath.Join(dir, "a"), spiffeid.RequireFromPath(td, "/agent"), nil, agentapp.Options{})
	out := map[string]telemetry.Desc{}
	for _, reg := range []*telemetry.Registry{srv.Srv.Metrics(), agent.A.Metrics()} {
		for _, d := range reg.Metrics() {
			out[d.Name] = d
		}
	}
	return out
}

// TestReadmeListsEveryMetric: every metric either binary registers is in
// the README's Metrics tables with its labels, and every metric listed
// there exists.
func TestReadmeListsEveryMetric(t *testing.T) {
	documented := readmeMetrics(t)
	reg := registered(t)
	for name, d := range reg {
		doc, ok := documented[name]
		if !ok {
			t.Errorf("README's Metrics section does not list %s", name)
			continue
		}
		a, b := slices.Clone(d.Labels), slices.Clone(doc)
		slices.Sort(a)
		slices.Sort(b)
		if !slices.Equal(a, b) {
			t.Errorf("README lists %s{%s}, registered with labels %v", name, strings.Join(doc, ","), d.Labels)
		}
	}
	for name := range documented {
		if _, ok := reg[name]; !ok {
			t.Errorf("README lists %s, which no binary registers", name)
		}
	}
}
