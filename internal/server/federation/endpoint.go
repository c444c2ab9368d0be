package federation

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Bundle endpoint HTTP limits: a bundle request is one small GET.
const (
	endpointReadTimeout  = 10 * time.Second
	endpointWriteTimeout = 10 * time.Second
	endpointIdleTimeout  = 2 * time.Minute
	endpointMaxHeader    = 8 << 10
	endpointStopTimeout  = 5 * time.Second
)

// EndpointConfig configures the bundle endpoint.
type EndpointConfig struct {
	// Addr is where to listen (port 0: a free port).
	Addr        *net.TCPAddr
	TrustDomain spiffeid.TrustDomain
	// Source serves the trust domain's bundle (OwnBundleSource).
	Source spiffebundle.Source
	// GetCertificate is the TLS certificate: the server's X509-SVID
	// (https_spiffe) or a ServingCert (https_web).
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	Log            *slog.Logger
}

// Endpoint is the SPIFFE bundle endpoint: GET / over TLS answers the
// trust domain's bundle (SPIRE answers 404 for other paths and 405 for
// other methods, and so does it).
type Endpoint struct {
	cfg     EndpointConfig
	log     *slog.Logger
	handler http.Handler

	ready chan struct{}
	mu    sync.Mutex
	addr  net.Addr
}

// NewEndpoint checks cfg and builds the handler; Run serves.
func NewEndpoint(cfg EndpointConfig) (*Endpoint, error) {
	switch {
	case cfg.Addr == nil:
		return nil, errors.New("bundle endpoint: address is required")
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("bundle endpoint: trust domain is required")
	case cfg.Source == nil || cfg.GetCertificate == nil:
		return nil, errors.New("bundle endpoint: bundle source and certificate are required")
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h, err := federation.NewHandler(cfg.TrustDomain, cfg.Source, federation.WithLogger(slogAdapter{log}))
	if err != nil {
		return nil, fmt.Errorf("bundle endpoint: %w", err)
	}
	return &Endpoint{cfg: cfg, log: log, handler: h, ready: make(chan struct{})}, nil
}

// Ready is closed once the endpoint listens.
func (e *Endpoint) Ready() <-chan struct{} { return e.ready }

// Addr is the address listened on (nil before Ready).
func (e *Endpoint) Addr() net.Addr {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.addr
}

// ServeHTTP answers GET / with the bundle, then closes the connection
// (over HTTP/2: GOAWAY). Peers fetch every few minutes, each time on a new
// connection (go-spiffe's FetchBundle and SPIRE make a new transport per
// fetch), so a kept-alive connection would only sit idle, an open file
// and goroutines on both sides, until a timeout.
func (e *Endpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Connection", "close")
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	e.handler.ServeHTTP(w, r)
}

// Run listens and serves until ctx ends.
func (e *Endpoint) Run(ctx context.Context) error {
	l, err := net.ListenTCP("tcp", e.cfg.Addr)
	if err != nil {
		return fmt.Errorf("bundle endpoint: listen on %s: %w", e.cfg.Addr, err)
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: e.cfg.GetCertificate}
	srv := &http.Server{
		Handler:           e,
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: endpointReadTimeout,
		ReadTimeout:       endpointReadTimeout,
		WriteTimeout:      endpointWriteTimeout,
		IdleTimeout:       endpointIdleTimeout,
		MaxHeaderBytes:    endpointMaxHeader,
		// TLS handshake failures of scanners and misconfigured peers.
		ErrorLog: slog.NewLogLogger(e.log.Handler(), slog.LevelDebug),
	}
	e.mu.Lock()
	e.addr = l.Addr()
	e.mu.Unlock()
	close(e.ready)
	e.log.Info("Serving the bundle endpoint", "address", l.Addr().String())
	errCh := make(chan error, 1)
	go func() { errCh <- srv.ServeTLS(l, "", "") }()
	select {
	case err := <-errCh:
		return fmt.Errorf("bundle endpoint: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), endpointStopTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	<-errCh
	e.log.Info("Bundle endpoint stopped")
	return nil
}

// slogAdapter is go-spiffe's logger on slog.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Debugf(format string, args ...any) { a.l.Debug(fmt.Sprintf(format, args...)) }
func (a slogAdapter) Infof(format string, args ...any)  { a.l.Info(fmt.Sprintf(format, args...)) }
func (a slogAdapter) Warnf(format string, args ...any)  { a.l.Warn(fmt.Sprintf(format, args...)) }
func (a slogAdapter) Errorf(format string, args ...any) { a.l.Error(fmt.Sprintf(format, args...)) }
