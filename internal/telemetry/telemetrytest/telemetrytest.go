// Package telemetrytest reads metrics the way Prometheus does, for tests:
// it scrapes an exposition over HTTP and parses it with the Prometheus
// text parser (github.com/prometheus/common/expfmt), so a test fails on
// anything a real scraper would reject.
package telemetrytest

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Samples are the parsed metric families of one scrape, by name.
type Samples map[string]*dto.MetricFamily

// Parse parses a text exposition.
func Parse(text string) (Samples, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("parse exposition: %w", err)
	}
	return fams, nil
}

// Scrape GETs url (asking for the text format, as Prometheus may) and
// parses the answer.
func Scrape(url string) (Samples, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		return nil, fmt.Errorf("GET %s: Content-Type %q", url, ct)
	}
	return Parse(string(body))
}

// ScrapeHandler GETs the metrics from h (a Registry's Handler) in the
// text format and parses them.
func ScrapeHandler(h http.Handler) (Samples, error) {
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %d: %s", rec.Code, rec.Body.String())
	}
	return Parse(rec.Body.String())
}

// Value is the value of the sample of name whose labels include the given
// name=value pairs (counter, gauge, or a histogram's sample count), summed
// over every matching series; ok is false when none matches.
func (s Samples) Value(name string, labels ...string) (v float64, ok bool) {
	f := s[name]
	if f == nil {
		return 0, false
	}
	for _, m := range f.GetMetric() {
		if !match(m, labels) {
			continue
		}
		ok = true
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			v += m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			v += m.GetGauge().GetValue()
		case dto.MetricType_HISTOGRAM:
			v += float64(m.GetHistogram().GetSampleCount())
		case dto.MetricType_UNTYPED:
			v += m.GetUntyped().GetValue()
		}
	}
	return v, ok
}

// Get is Value, 0 when absent.
func (s Samples) Get(name string, labels ...string) float64 {
	v, _ := s.Value(name, labels...)
	return v
}

// Series lists the label sets of name, each rendered {a="x",b="y"}, sorted.
func (s Samples) Series(name string) []string {
	var out []string
	for _, m := range s[name].GetMetric() {
		var parts []string
		for _, l := range m.GetLabel() {
			parts = append(parts, l.GetName()+"="+strconv.Quote(l.GetValue()))
		}
		out = append(out, "{"+strings.Join(parts, ",")+"}")
	}
	sort.Strings(out)
	return out
}

func match(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
