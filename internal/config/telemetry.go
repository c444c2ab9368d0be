package config

import (
	"errors"
	"fmt"
)

// Telemetry is the top-level telemetry section of both binaries, as SPIRE
// spells it. Sigil exports Prometheus only; SPIRE's other sinks and
// metric-shaping options are refused by name.
type Telemetry struct {
	// Prometheus is the exporter's listener; nil when not configured.
	Prometheus *Prometheus
}

// Prometheus is telemetry.Prometheus: where the exporter listens.
type Prometheus struct {
	Host string // default "localhost", as SPIRE
	Port int    // 0 picks a free port (logged at start-up)
}

// DefaultPrometheusHost is SPIRE's default exporter host.
const DefaultPrometheusHost = "localhost"

// SPIRE telemetry options Sigil does not implement: its other sinks, and
// the options that rename or filter metrics (Sigil's names are fixed and
// documented).
var unsupportedTelemetry = map[string]bool{
	"DogStatsd": true, "Statsd": true, "M3": true, "InMem": true,
	"MetricPrefix": true, "EnableTrustDomainLabel": true, "EnableHostnameLabel": true,
	"AllowedPrefixes": true, "BlockedPrefixes": true, "AllowedLabels": true, "BlockedLabels": true,
}

// telemetry reads the top-level telemetry block into t.
func (d *decoder) telemetry(root *block, t *Telemetry) {
	b := root.sub("telemetry", "telemetry block")
	if b == nil {
		return
	}
	b.unsupported = unsupportedTelemetry
	if pb := b.sub("Prometheus", "telemetry.Prometheus block"); pb != nil {
		pb.unsupported = map[string]bool{"tls": true}
		p := &Prometheus{Host: DefaultPrometheusHost}
		pb.str("host", &p.Host)
		pb.port("port", &p.Port)
		pb.done()
		t.Prometheus = p
	}
	b.done()
}

func (t *Telemetry) validate() error {
	if t.Prometheus == nil {
		return nil
	}
	var errs []error
	if t.Prometheus.Host == "" {
		errs = append(errs, errors.New("telemetry.Prometheus.host must not be empty"))
	}
	if p := t.Prometheus.Port; p < 0 || p > 65535 {
		errs = append(errs, fmt.Errorf("telemetry.Prometheus.port %d out of range 0..65535", p))
	}
	return errors.Join(errs...)
}
