package oidc

import (
	"net/http"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clock"
)

// HealthThreshold is how long the provider stays healthy without reaching
// its key source: 5 poll intervals, at least 3 minutes (SPIRE's rule).
func HealthThreshold(pollInterval time.Duration) time.Duration {
	return max(5*pollInterval, 3*time.Minute)
}

// HealthConfig configures the health_checks handler.
type HealthConfig struct {
	Source    Source
	Threshold time.Duration
	ReadyPath string
	LivePath  string
	Clock     clock.Clock
}

// NewHealthHandler serves SPIRE's provider probes: ready (200, else 500)
// while the source reached its origin less than Threshold ago; live
// likewise, and also during the first Threshold after start before the
// source ever reached it.
func NewHealthHandler(cfg HealthConfig) http.Handler {
	clk := clock.OrReal(cfg.Clock)
	started := clk.Now()
	fresh := func() (ok, never bool) {
		last := cfg.Source.LastContact()
		if last.IsZero() {
			return false, true
		}
		return clk.Now().Sub(last) < cfg.Threshold, false
	}
	probe := func(live bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet {
				http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
				return
			}
			ok, never := fresh()
			if live && never {
				ok = clk.Now().Sub(started) < cfg.Threshold
			}
			if !ok {
				w.WriteHeader(http.StatusInternalServerError)
				return
			}
			w.WriteHeader(http.StatusOK)
		}
	}
	mux := http.NewServeMux()
	mux.Handle(cfg.ReadyPath, probe(false))
	mux.Handle(cfg.LivePath, probe(true))
	return mux
}
