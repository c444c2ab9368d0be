// Package telemetry is the one Prometheus registry of each binary
// (sigil-server, sigil-agent) and the `telemetry { Prometheus { host port } }`
// exporter that serves it, built on the official client library
// (github.com/prometheus/client_golang).
//
// Metric names are full Prometheus names with the binary's prefix
// (sigil_server_…, sigil_agent_…), fixed in code and documented in the
// README's "Metrics" section; the registry refuses a name without its
// prefix and a second registration of a name with another type or label
// set. Registering the same name, type and labels twice returns the first
// metric, so two components may share one.
//
// Components do not import this package: each declares, in its own
// package, the small interface it records through (internal/server/…
// Metrics, internal/agent/… Metrics), and the binary's wiring
// (internal/app/…) passes them the implementations in server.go and
// agent.go. Every method of Counter, Gauge and Histogram is a no-op on a
// nil receiver, and every constructor of a nil *Registry returns nil: code
// built without telemetry records nothing and needs no checks.
package telemetry

import (
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metric prefixes of the two binaries.
const (
	ServerPrefix = "sigil_server_"
	AgentPrefix  = "sigil_agent_"
)

// LatencyBuckets are the histogram buckets of every latency metric, in
// seconds: 0.5 ms to 10 s.
var LatencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// Metric types, as the text format names them.
const (
	TypeCounter   = "counter"
	TypeGauge     = "gauge"
	TypeHistogram = "histogram"
)

// Desc describes one registered metric.
type Desc struct {
	Name   string
	Type   string // TypeCounter, TypeGauge or TypeHistogram
	Help   string
	Labels []string
}

// Registry is a binary's metric registry. Safe for concurrent use.
type Registry struct {
	prefix string
	reg    *prometheus.Registry

	mu    sync.Mutex
	descs map[string]Desc
	vecs  map[string]any // name -> *Counter, *Gauge, *Histogram
}

var validName = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)

// NewRegistry returns a registry whose metric names must start with prefix
// (ServerPrefix or AgentPrefix). Its Handler and Gatherer also report the
// Go runtime's and the process's standard metrics (go_*, process_*), as
// Prometheus exporters usually do: those of client_golang's default
// registry, which registers them and nothing else (nothing in Sigil
// registers there). The collectors package is not used: it links
// database/sql, which the agent must not.
func NewRegistry(prefix string) *Registry {
	return &Registry{prefix: prefix, reg: prometheus.NewRegistry(), descs: map[string]Desc{}, vecs: map[string]any{}}
}

// Prefix is the prefix every metric name of r starts with.
func (r *Registry) Prefix() string {
	if r == nil {
		return ""
	}
	return r.prefix
}

// Handler serves r in the Prometheus exposition formats (text, or what
// the scraper negotiates), GET and HEAD only.
func (r *Registry) Handler() http.Handler {
	h := promhttp.HandlerFor(r.Gatherer(), promhttp.HandlerOpts{})
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h.ServeHTTP(w, req)
	})
}

// Gatherer gathers r's metrics and the go_* and process_* ones.
func (r *Registry) Gatherer() prometheus.Gatherer {
	return prometheus.Gatherers{r.reg, prometheus.DefaultGatherer}
}

// Metrics lists the metrics registered through r (not the go_* and
// process_* ones), sorted by name.
func (r *Registry) Metrics() []Desc {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Desc, 0, len(r.descs))
	for _, d := range r.descs {
		d.Labels = slices.Clone(d.Labels)
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b Desc) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// add records d, or returns the metric already registered under its name
// when it has the same type and labels. It panics on a name without r's
// prefix or a conflicting registration: both are programming errors.
func (r *Registry) add(d Desc, build func() (any, prometheus.Collector)) any {
	if !strings.HasPrefix(d.Name, r.prefix) || !validName.MatchString(d.Name) {
		panic(fmt.Sprintf("telemetry: metric name %q must match %s[a-z0-9_]+", d.Name, r.prefix))
	}
	if d.Help == "" {
		panic(fmt.Sprintf("telemetry: metric %q has no help text", d.Name))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if prev, ok := r.descs[d.Name]; ok {
		if prev.Type != d.Type || !slices.Equal(prev.Labels, d.Labels) {
			panic(fmt.Sprintf("telemetry: metric %q registered as %s%v and as %s%v", d.Name, prev.Type, prev.Labels, d.Type, d.Labels))
		}
		return r.vecs[d.Name]
	}
	v, c := build()
	if c != nil {
		r.reg.MustRegister(c)
	}
	d.Labels = slices.Clone(d.Labels)
	r.descs[d.Name] = d
	r.vecs[d.Name] = v
	return v
}

// Counter registers (or returns) the counter name with the given label
// names. Counter names end in _total.
func (r *Registry) Counter(name, help string, labels ...string) *Counter {
	if r == nil {
		return nil
	}
	if !strings.HasSuffix(name, "_total") {
		panic(fmt.Sprintf("telemetry: counter %q must end in _total", name))
	}
	return r.add(Desc{Name: name, Type: TypeCounter, Help: help, Labels: labels}, func() (any, prometheus.Collector) {
		v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
		return &Counter{v: v, n: len(labels)}, v
	}).(*Counter)
}

// Gauge registers (or returns) the gauge name with the given label names.
func (r *Registry) Gauge(name, help string, labels ...string) *Gauge {
	if r == nil {
		return nil
	}
	return r.add(Desc{Name: name, Type: TypeGauge, Help: help, Labels: labels}, func() (any, prometheus.Collector) {
		v := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
		return &Gauge{v: v, n: len(labels)}, v
	}).(*Gauge)
}

// Histogram registers (or returns) the histogram name with the given label
// names and LatencyBuckets. Latency histograms are in seconds and their
// names end in _seconds.
func (r *Registry) Histogram(name, help string, labels ...string) *Histogram {
	if r == nil {
		return nil
	}
	if !strings.HasSuffix(name, "_seconds") {
		panic(fmt.Sprintf("telemetry: latency histogram %q must end in _seconds", name))
	}
	return r.add(Desc{Name: name, Type: TypeHistogram, Help: help, Labels: labels}, func() (any, prometheus.Collector) {
		v := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: LatencyBuckets}, labels)
		return &Histogram{v: v, n: len(labels)}, v
	}).(*Histogram)
}

// GaugeFunc registers a gauge without labels whose value f computes at
// every scrape. f must be cheap and safe for concurrent use.
func (r *Registry) GaugeFunc(name, help string, f func() float64) {
	if r == nil {
		return
	}
	r.add(Desc{Name: name, Type: TypeGauge, Help: help}, func() (any, prometheus.Collector) {
		c := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
		return c, c
	})
}

// Sample is one value of a labelled gauge computed at scrape time.
type Sample struct {
	Labels []string // values, in the order of the gauge's label names
	Value  float64
}

// GaugeSet registers gauges computed together at every scrape: collect
// returns, per gauge name, its samples. Every name (with its help and
// label names) is declared in descs; collect returns samples only for
// them. Use it when several gauges must come from one consistent snapshot
// (the agent's state) or have label values known only at scrape time.
func (r *Registry) GaugeSet(descs []Desc, collect func() map[string][]Sample) {
	if r == nil {
		return
	}
	pds := map[string]*prometheus.Desc{}
	for _, d := range descs {
		d.Type = TypeGauge
		pd := prometheus.NewDesc(d.Name, d.Help, d.Labels, nil)
		pds[d.Name] = pd
		// Registered one by one for the name checks; the collector below
		// is the one that reports them.
		r.add(d, func() (any, prometheus.Collector) { return nil, nil })
	}
	r.reg.MustRegister(&gaugeSet{descs: pds, collect: collect})
}

type gaugeSet struct {
	descs   map[string]*prometheus.Desc
	collect func() map[string][]Sample
}

func (g *gaugeSet) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range g.descs {
		ch <- d
	}
}

func (g *gaugeSet) Collect(ch chan<- prometheus.Metric) {
	for name, samples := range g.collect() {
		d, ok := g.descs[name]
		if !ok {
			continue
		}
		for _, s := range samples {
			m, err := prometheus.NewConstMetric(d, prometheus.GaugeValue, s.Value, s.Labels...)
			if err != nil {
				ch <- prometheus.NewInvalidMetric(d, err)
				continue
			}
			ch <- m
		}
	}
}

// Counter is a counter with labels. A nil *Counter records nothing.
type Counter struct {
	v *prometheus.CounterVec
	n int
}

// Inc adds 1 to the counter with these label values (one per label name).
func (c *Counter) Inc(labels ...string) { c.Add(1, labels...) }

// Add adds v (>= 0) to the counter with these label values.
func (c *Counter) Add(v float64, labels ...string) {
	if c == nil || len(labels) != c.n {
		return
	}
	c.v.WithLabelValues(labels...).Add(v)
}

// Gauge is a gauge with labels. A nil *Gauge records nothing.
type Gauge struct {
	v *prometheus.GaugeVec
	n int
}

// Set sets the gauge with these label values.
func (g *Gauge) Set(v float64, labels ...string) {
	if g == nil || len(labels) != g.n {
		return
	}
	g.v.WithLabelValues(labels...).Set(v)
}

// Add adds v (possibly negative) to the gauge with these label values.
func (g *Gauge) Add(v float64, labels ...string) {
	if g == nil || len(labels) != g.n {
		return
	}
	g.v.WithLabelValues(labels...).Add(v)
}

// SetTime sets the gauge to t as Unix seconds, 0 for the zero time.
func (g *Gauge) SetTime(t time.Time, labels ...string) { g.Set(UnixSeconds(t), labels...) }

// Delete removes the series with these label values.
func (g *Gauge) Delete(labels ...string) {
	if g == nil || len(labels) != g.n {
		return
	}
	g.v.DeleteLabelValues(labels...)
}

// Histogram is a latency histogram with labels. A nil *Histogram records
// nothing.
type Histogram struct {
	v *prometheus.HistogramVec
	n int
}

// Observe records d with these label values.
func (h *Histogram) Observe(d time.Duration, labels ...string) {
	if h == nil || len(labels) != h.n {
		return
	}
	h.v.WithLabelValues(labels...).Observe(d.Seconds())
}

// UnixSeconds is t as Unix seconds with millisecond precision, 0 for the
// zero time: the unit of every *_timestamp_seconds and *_expiry_seconds
// gauge.
func UnixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixMilli()) / 1000
}
