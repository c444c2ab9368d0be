package telemetry

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/template"

	"github.com/prometheus/common/model"
	"gopkg.in/yaml.v3"

	"github.com/sigil-spiffe/sigil/internal/telemetry"
	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// What deploy/monitoring ships: Prometheus alerting rules and a Grafana
// dashboard. promtool and Grafana are not available to the tests: the
// files are parsed (YAML, JSON, the alerts' annotation templates) and
// every metric their PromQL expressions name is checked against what the
// binaries register.

func monitoringFile(t *testing.T, name string) []byte {
	t.Helper()
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "deploy", "monitoring", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// knownMetrics are the series names an expression may use: every
// registered metric (a histogram's _bucket, _sum and _count), the go_*
// and process_* metrics the registries serve, and Prometheus's up.
func knownMetrics(t *testing.T) map[string]bool {
	t.Helper()
	known := map[string]bool{"up": true}
	for name, d := range registered(t) {
		known[name] = true
		if d.Type == telemetry.TypeHistogram {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				known[name+s] = true
			}
		}
	}
	fams, err := telemetry.NewRegistry(telemetry.AgentPrefix).Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		known[f.GetName()] = true
	}
	return known
}

// promqlGrouping are the keywords followed by a parenthesized label list.
var promqlGrouping = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}

// promqlKeywords are operators, and the aggregations, which may be
// followed by a grouping rather than their parenthesis (sum by (x) (…)).
var promqlKeywords = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true, "inf": true, "nan": true,
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true, "count": true,
	"count_values": true, "bottomk": true, "topk": true, "quantile": true, "limitk": true, "limit_ratio": true}

// metricNames returns the metric names an expression selects: the
// identifiers outside label matchers, ranges, strings, grouping lists and
// function calls.
func metricNames(expr string) []string {
	var out []string
	isStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isIdent := func(c byte) bool { return isStart(c) || c >= '0' && c <= '9' }
	skipTo := func(i int, end byte) int {
		for i < len(expr) && expr[i] != end {
			if q := expr[i]; q == '"' || q == '\'' || q == '`' {
				i++
				for i < len(expr) && expr[i] != q {
					if expr[i] == '\\' {
						i++
					}
					i++
				}
			}
			i++
		}
		return i + 1
	}
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			i = skipTo(i+1, c)
		case c == '{':
			i = skipTo(i+1, '}')
		case c == '[':
			i = skipTo(i+1, ']')
		case c >= '0' && c <= '9' || c == '.':
			for i < len(expr) && (isIdent(expr[i]) || expr[i] == '.') {
				i++
			}
		case isStart(c):
			j := i
			for j < len(expr) && isIdent(expr[j]) {
				j++
			}
			word := expr[i:j]
			k := j
			for k < len(expr) && expr[k] == ' ' {
				k++
			}
			switch {
			case k < len(expr) && expr[k] == '(' && promqlGrouping[word]:
				j = skipTo(k+1, ')')
			case k < len(expr) && expr[k] == '(':
				// a function
			case promqlKeywords[word] || promqlGrouping[word]:
			default:
				out = append(out, word)
			}
			i = j
		default:
			i++
		}
	}
	return out
}

func TestMetricNamesOfExpressions(t *testing.T) {
	for expr, want := range map[string]string{
		`up{job="x"} == 0`: "up",
		`sum by (instance, job) (rate(a_total{x="}"}[5m])) > 0.1`:                             "a_total",
		`histogram_quantile(0.95, sum by (le) (rate(h_bucket[$__rate_interval])))`:            "h_bucket",
		`count(c == 0) > 0.5 * count(c)`:                                                      "c c",
		`x > 0 and (x - time()) < (x - y) / 12`:                                               "x x x y",
		`sum without (a) (m) unless on (b) group_left (c) n offset 5m`:                        "m n",
		`label_replace(m, "dst", "$1", "src", "(.*)") or vector(1e3)`:                         "m",
		"max by (kind) ((time() - sigil_server_ca_issued_timestamp_seconds{i=~\"$server\"}))": "sigil_server_ca_issued_timestamp_seconds",
	} {
		if got := strings.Join(metricNames(expr), " "); got != want {
			t.Errorf("metricNames(%s) = %q, want %q", expr, got, want)
		}
	}
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// promTemplateFuncs stand in for the functions Prometheus gives alert
// templates, so the annotations parse as Prometheus parses them.
var promTemplateFuncs = func() template.FuncMap {
	m := template.FuncMap{}
	for _, f := range []string{"query", "first", "label", "value", "strvalue", "args", "reReplaceAll", "safeHtml", "match",
		"title", "toUpper", "toLower", "graphLink", "tableLink", "sortByLabel", "stripPort", "stripDomain", "humanize",
		"humanize1024", "humanizeDuration", "humanizePercentage", "humanizeTimestamp", "toTime", "pathPrefix", "externalURL", "parseDuration"} {
		m[f] = func(...any) any { return nil }
	}
	return m
}()

// TestAlertRules: deploy/monitoring/alerts.yaml is a valid Prometheus rule
// file (strict YAML, unique alert names, durations, severities, annotation
// templates) whose expressions use only metrics that exist, and it covers
// the operational cases the README promises alerts for.
func TestAlertRules(t *testing.T) {
	dec := yaml.NewDecoder(bytes.NewReader(monitoringFile(t, "alerts.yaml")))
	dec.KnownFields(true)
	var rf ruleFile
	if err := dec.Decode(&rf); err != nil {
		t.Fatalf("alerts.yaml: %v", err)
	}
	known := knownMetrics(t)
	alerts := map[string]string{}
	for _, g := range rf.Groups {
		if g.Name == "" || len(g.Rules) == 0 {
			t.Errorf("group %q: a name and rules are required", g.Name)
		}
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" {
				t.Errorf("group %s: a rule without alert or expr: %+v", g.Name, r)
				continue
			}
			if _, dup := alerts[r.Alert]; dup {
				t.Errorf("alert %s defined twice", r.Alert)
			}
			alerts[r.Alert] = r.Expr
			if r.For != "" {
				if _, err := model.ParseDuration(r.For); err != nil {
					t.Errorf("alert %s: for %q: %v", r.Alert, r.For, err)
				}
			}
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("alert %s: severity %q", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s: summary and description are required", r.Alert)
			}
			for k, text := range r.Annotations {
				// Prometheus prepends these definitions to every template.
				src := "{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$value := .Value}}" + text
				if _, err := template.New(k).Funcs(promTemplateFuncs).Parse(src); err != nil {
					t.Errorf("alert %s: annotation %s: %v", r.Alert, k, err)
				}
			}
			names := metricNames(r.Expr)
			if len(names) == 0 {
				t.Errorf("alert %s: no metric in %q", r.Alert, r.Expr)
			}
			for _, n := range names {
				if !known[n] {
					t.Errorf("alert %s: %s is not a metric Sigil exports (expr %q)", r.Alert, n, r.Expr)
				}
			}
		}
	}
	// The cases operators asked for: an agent offline or degraded, SVIDs
	// or the CA expiring, attestation failures, the server unavailable,
	// datastore errors.
	for _, want := range []struct{ alert, metric string }{
		{"SigilAgentDown", "up"},
		{"SigilAgentDegraded", "sigil_agent_state"},
		{"SigilAgentNotServing", "sigil_agent_state"},
		{"SigilAgentSVIDExpiringSoon", "sigil_agent_earliest_svid_expiry_seconds"},
		{"SigilServerCAExpiringSoon", "sigil_server_ca_expiry_timestamp_seconds"},
		{"SigilNodeAttestationFailures", "sigil_server_node_attestations_total"},
		{"SigilServerDown", "up"},
		{"SigilServerUnavailableToAgents", "sigil_agent_connected"},
		{"SigilServerDatastoreErrors", "sigil_server_datastore_operation_errors_total"},
	} {
		expr, ok := alerts[want.alert]
		if !ok {
			t.Errorf("no alert %s", want.alert)
			continue
		}
		if !strings.Contains(expr, want.metric) {
			t.Errorf("alert %s does not use %s: %q", want.alert, want.metric, expr)
		}
	}
}

// TestDashboard: deploy/monitoring/sigil-dashboard.json is a Grafana
// dashboard (JSON with the fields an import needs, unique panel IDs, every
// panel on the data source variable) whose queries use only metrics that
// exist.
func TestDashboard(t *testing.T) {
	var d struct {
		UID           string `json:"uid"`
		Title         string `json:"title"`
		SchemaVersion int    `json:"schemaVersion"`
		Templating    struct {
			List []struct {
				Name       string `json:"name"`
				Type       string `json:"type"`
				Query      any    `json:"query"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID         int    `json:"id"`
			Type       string `json:"type"`
			Title      string `json:"title"`
			Datasource *struct {
				Type string `json:"type"`
				UID  string `json:"uid"`
			} `json:"datasource"`
			GridPos *struct{ H, W, X, Y int } `json:"gridPos"`
			Targets []struct {
				Expr  string `json:"expr"`
				RefID string `json:"refId"`
			} `json:"targets"`
		} `json:"panels"`
	}
	dec := json.NewDecoder(bytes.NewReader(monitoringFile(t, "sigil-dashboard.json")))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("sigil-dashboard.json: %v", err)
	}
	if d.UID == "" || d.Title == "" || d.SchemaVersion < 30 || len(d.Panels) < 10 {
		t.Fatalf("dashboard: uid %q, title %q, schemaVersion %d, %d panels", d.UID, d.Title, d.SchemaVersion, len(d.Panels))
	}
	known := knownMetrics(t)
	check := func(where, expr string) {
		names := metricNames(expr)
		if len(names) == 0 {
			t.Errorf("%s: no metric in %q", where, expr)
		}
		for _, n := range names {
			if !known[n] {
				t.Errorf("%s: %s is not a metric Sigil exports (expr %q)", where, n, expr)
			}
		}
	}
	hasDatasourceVar := false
	for _, v := range d.Templating.List {
		switch v.Type {
		case "datasource":
			hasDatasourceVar = v.Name == "datasource"
		case "query":
			check("variable "+v.Name, strings.TrimSuffix(strings.TrimPrefix(v.Definition, "label_values("), ", instance)"))
		}
	}
	if !hasDatasourceVar {
		t.Error("no datasource variable: the dashboard would be bound to one data source")
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel ID %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos == nil || p.GridPos.W <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: bad gridPos %+v", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: data source %+v, want the ${datasource} variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			check("panel "+p.Title, tg.Expr)
		}
	}
}
