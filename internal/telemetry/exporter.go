package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// ExporterConfig configures the Prometheus exporter
// (`telemetry { Prometheus { host port } }`).
type ExporterConfig struct {
	// Addr is host:port; port 0 picks a free port (see Exporter.Addr).
	Addr     string
	Registry *Registry
	Log      *slog.Logger
}

// Exporter serves a Registry over plain HTTP, on every path as SPIRE's
// exporter does (Prometheus scrapes /metrics by default). It is a
// component: Run serves until its context ends.
type Exporter struct {
	cfg   ExporterConfig
	log   *slog.Logger
	ready chan struct{}

	mu   sync.Mutex
	addr net.Addr
}

// NewExporter checks cfg; Run binds and serves.
func NewExporter(cfg ExporterConfig) (*Exporter, error) {
	if cfg.Registry == nil {
		return nil, errors.New("telemetry exporter: registry is required")
	}
	if _, _, err := net.SplitHostPort(cfg.Addr); err != nil {
		return nil, fmt.Errorf("telemetry exporter: address %q: %w", cfg.Addr, err)
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	return &Exporter{cfg: cfg, log: log, ready: make(chan struct{})}, nil
}

// Ready is closed once the listener is bound.
func (e *Exporter) Ready() <-chan struct{} { return e.ready }

// Addr is the bound address (nil before Ready).
func (e *Exporter) Addr() net.Addr {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.addr
}

// Run listens and serves until ctx ends. A listener that cannot be bound
// is an error (the process stops, as SPIRE's does).
func (e *Exporter) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", e.cfg.Addr)
	if err != nil {
		return fmt.Errorf("telemetry Prometheus exporter: %w", err)
	}
	e.mu.Lock()
	e.addr = ln.Addr()
	e.mu.Unlock()
	close(e.ready)
	host, _, _ := net.SplitHostPort(e.cfg.Addr)
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		e.log.Warn("The Prometheus exporter accepts remote connections: make sure access to its port is controlled", "address", ln.Addr().String())
	}
	e.log.Info("Starting Prometheus exporter", "address", ln.Addr().String())
	srv := &http.Server{Handler: e.cfg.Registry.Handler(), ReadHeaderTimeout: 10 * time.Second}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the goroutine below if Serve fails by itself
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	err = srv.Serve(ln)
	cancel()
	<-stopped
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("telemetry Prometheus exporter: %w", err)
	}
	return nil
}
