// Package healthcheck serves SPIRE's health_checks listener for both
// binaries: a liveness and a readiness path over plain HTTP, meant for
// loopback or a pod network, answering 200 or 503 with a one-line reason.
package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Probe reports whether a check passes and a short human-readable detail.
type Probe func() (ok bool, detail string)

// Config describes the listener.
type Config struct {
	Addr      string // host:port
	LivePath  string
	ReadyPath string
	Live      Probe
	Ready     Probe
	// Handlers are extra paths served on the same listener (e.g. metrics).
	Handlers map[string]http.Handler
}

// Serve listens on cfg.Addr and serves until ctx ends.
func Serve(ctx context.Context, cfg Config) error {
	mux := http.NewServeMux()
	mux.Handle(cfg.LivePath, probeHandler(cfg.Live))
	mux.Handle(cfg.ReadyPath, probeHandler(cfg.Ready))
	for path, h := range cfg.Handlers {
		mux.Handle(path, h)
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("health_checks listener: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	err = srv.Serve(ln)
	<-stopped
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("health_checks listener: %w", err)
	}
	return nil
}

func probeHandler(p Probe) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		ok, detail := true, "ok"
		if p != nil {
			ok, detail = p()
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_, _ = fmt.Fprintln(w, detail)
	})
}
