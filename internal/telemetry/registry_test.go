package telemetry

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/sigil-spiffe/sigil/internal/telemetry/telemetrytest"
)

// Parse parses a text exposition with the Prometheus parser.
func parse(t *testing.T, body string) map[string]*dto.MetricFamily {
	t.Helper()
	fams, err := telemetrytest.Parse(body)
	if err != nil {
		t.Fatalf("%v\n%s", err, body)
	}
	return fams
}

func TestRegistryHelpers(t *testing.T) {
	r := NewRegistry(ServerPrefix)
	c := r.Counter("sigil_server_things_total", "Things.", "kind")
	c.Inc("a")
	c.Add(2, "a")
	c.Inc("b")
	c.Inc() // wrong label count: ignored, not a panic
	if again := r.Counter("sigil_server_things_total", "Things.", "kind"); again != c {
		t.Fatal("registering the same counter twice did not return the first")
	}
	g := r.Gauge("sigil_server_level", "Level.")
	g.Set(3)
	g.Add(-1)
	h := r.Histogram("sigil_server_wait_seconds", "Wait.", "op")
	h.Observe(3*time.Millisecond, "x")
	h.Observe(2*time.Second, "x")
	r.GaugeFunc("sigil_server_answer", "Answer.", func() float64 { return 42 })
	r.GaugeSet([]Desc{{Name: "sigil_server_set_a", Help: "A.", Labels: []string{"k"}}, {Name: "sigil_server_set_b", Help: "B."}},
		func() map[string][]Sample {
			return map[string][]Sample{
				"sigil_server_set_a": {{Labels: []string{"x"}, Value: 1}, {Labels: []string{"y"}, Value: 0}},
				"sigil_server_set_b": {{Value: 7}},
				"sigil_server_other": {{Value: 9}}, // not declared: dropped
			}
		})

	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	fams := parse(t, rec.Body.String())
	want := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			key := name
			for _, l := range m.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				want[key] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				want[key] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				want[key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	for k, v := range map[string]float64{
		"sigil_server_things_total,kind=a": 3, "sigil_server_things_total,kind=b": 1,
		"sigil_server_level": 2, "sigil_server_wait_seconds,op=x": 2, "sigil_server_answer": 42,
		"sigil_server_set_a,k=x": 1, "sigil_server_set_a,k=y": 0, "sigil_server_set_b": 7,
	} {
		if want[k] != v {
			t.Errorf("%s = %v, want %v", k, want[k], v)
		}
	}
	if _, ok := want["sigil_server_other"]; ok {
		t.Error("an undeclared GaugeSet sample was exported")
	}
	if _, ok := fams["go_goroutines"]; !ok {
		t.Error("no go_* metrics")
	}
	var names []string
	for _, d := range r.Metrics() {
		names = append(names, d.Name+"/"+d.Type)
	}
	if got := strings.Join(names, " "); got != "sigil_server_answer/gauge sigil_server_level/gauge sigil_server_set_a/gauge sigil_server_set_b/gauge sigil_server_things_total/counter sigil_server_wait_seconds/histogram" {
		t.Errorf("Metrics() = %s", got)
	}
}

func TestRegistryRefusesBadNames(t *testing.T) {
	r := NewRegistry(AgentPrefix)
	r.Counter("sigil_agent_x_total", "X.", "a")
	for name, f := range map[string]func(){
		"other prefix":     func() { r.Gauge("sigil_server_x", "X.") },
		"bad characters":   func() { r.Gauge("sigil_agent_X-y", "X.") },
		"counter suffix":   func() { r.Counter("sigil_agent_x", "X.") },
		"histogram suffix": func() { r.Histogram("sigil_agent_x", "X.") },
		"no help":          func() { r.Gauge("sigil_agent_y", "") },
		"other labels":     func() { r.Counter("sigil_agent_x_total", "X.", "b") },
		"other type":       func() { r.Gauge("sigil_agent_x_total", "X.", "a") },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatal("no panic")
				}
			}()
			f()
		})
	}
}

func TestNilRegistryRecordsNothing(t *testing.T) {
	var r *Registry
	r.Counter("sigil_agent_x_total", "X.").Inc()
	r.Gauge("sigil_agent_x", "X.").Set(1)
	r.Gauge("sigil_agent_x", "X.").SetTime(time.Now())
	r.Histogram("sigil_agent_x_seconds", "X.").Observe(time.Second)
	r.GaugeFunc("sigil_agent_y", "Y.", func() float64 { return 1 })
	r.GaugeSet(nil, nil)
}

func TestExporterServesEveryPath(t *testing.T) {
	r := NewRegistry(AgentPrefix)
	r.Counter("sigil_agent_hits_total", "Hits.").Inc()
	e, err := NewExporter(ExporterConfig{Addr: "127.0.0.1:0", Registry: r})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	<-e.Ready()
	for _, path := range []string{"/metrics", "/"} {
		resp, err := http.Get("http://" + e.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d", path, resp.StatusCode)
		}
		if f := parse(t, string(body))["sigil_agent_hits_total"]; f == nil || f.GetMetric()[0].GetCounter().GetValue() != 1 {
			t.Fatalf("GET %s: sigil_agent_hits_total missing or wrong:\n%s", path, body)
		}
	}
	resp, err := http.Post("http://"+e.Addr().String()+"/metrics", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %d", resp.StatusCode)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A port already taken is an error from Run, not a hang.
func TestExporterBindError(t *testing.T) {
	r := NewRegistry(AgentPrefix)
	first, err := NewExporter(ExporterConfig{Addr: "127.0.0.1:0", Registry: r})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = first.Run(ctx) }()
	<-first.Ready()
	second, err := NewExporter(ExporterConfig{Addr: first.Addr().String(), Registry: r})
	if err != nil {
		t.Fatal(err)
	}
	if err := second.Run(ctx); err == nil || !strings.Contains(err.Error(), "telemetry Prometheus exporter") {
		t.Fatalf("Run on a taken port: %v", err)
	}
}
