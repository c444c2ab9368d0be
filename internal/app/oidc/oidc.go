// Package oidc assembles sigil-oidc, the OIDC discovery provider: its key
// source (the agent's Workload API, the server API on the admin socket, or
// a bundle file), the provider's handler (internal/oidc), its listener (a
// unix socket, plain TCP, or HTTPS with a serving certificate re-read from
// disk) and the optional health checks, run under one errgroup.
//
// It must stay small: nothing here (or below) may link SQL drivers or
// server packages; cmd/sigil-oidc's deps test enforces it.
package oidc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"golang.org/x/sync/errgroup"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/oidc"
	"github.com/sigil-spiffe/sigil/internal/servingcert"
	"github.com/sigil-spiffe/sigil/internal/unixsock"
)

// Options are test hooks; the zero value is production.
type Options struct {
	Clock clock.Clock
	// WorkloadAPIClientOptions are added to the Workload API client's.
	WorkloadAPIClientOptions []workloadapi.ClientOption
}

// Provider is an assembled, not yet running sigil-oidc: its listeners are
// bound.
type Provider struct {
	cfg    *config.OIDC
	log    *slog.Logger
	source interface {
		oidc.Source
		Run(context.Context) error
	}
	cert    *servingcert.Cert // serving_cert_file, else nil
	lis     net.Listener
	srv     *http.Server
	health  *http.Server // nil without health_checks
	healthL net.Listener
}

// shutdownTimeout bounds the graceful stop of the HTTP servers.
const shutdownTimeout = 5 * time.Second

// New builds the source and the handler and binds the listeners, so that
// a port in use or a certificate that does not load stops start-up.
func New(ctx context.Context, cfg *config.OIDC, log *slog.Logger, opts Options) (_ *Provider, err error) {
	p := &Provider{cfg: cfg, log: log}
	clk := clock.OrReal(opts.Clock)
	var poll time.Duration
	switch {
	case cfg.WorkloadAPI != nil:
		addr := cfg.WorkloadAPI.SocketPath
		if !strings.HasPrefix(addr, "unix:") {
			// A path, as in SPIRE's configuration; made absolute.
			abs, aerr := filepath.Abs(addr)
			if aerr != nil {
				return nil, fmt.Errorf("workload_api socket_path: %w", aerr)
			}
			addr = "unix://" + abs
		}
		p.source, err = oidc.NewWorkloadAPISource(oidc.WorkloadAPIConfig{
			Addr: addr, TrustDomain: cfg.WorkloadAPI.TrustDomain, Clock: clk,
			Log: log.With("subsystem", "workload_api"), ClientOptions: opts.WorkloadAPIClientOptions,
		})
		poll = cfg.WorkloadAPI.PollInterval
	case cfg.ServerAPI != nil:
		p.source, err = oidc.NewServerAPISource(oidc.ServerAPIConfig{
			Address: cfg.ServerAPI.Address, PollInterval: cfg.ServerAPI.PollInterval, Clock: clk, Log: log.With("subsystem", "server_api"),
		})
		poll = cfg.ServerAPI.PollInterval
	case cfg.File != nil:
		p.source, err = oidc.NewFileSource(oidc.FileConfig{
			Path: cfg.File.Path, PollInterval: cfg.File.PollInterval, Clock: clk, Log: log.With("subsystem", "file"),
		})
		poll = cfg.File.PollInterval
	default:
		err = errors.New("no key source configured (workload_api, server_api or file)")
	}
	if err != nil {
		return nil, err
	}

	hc := oidc.HandlerConfig{
		Source: p.source, Domains: cfg.Domains, AllowInsecureScheme: cfg.AllowInsecureScheme, SetKeyUse: cfg.SetKeyUse,
		PathPrefix: cfg.ServerPathPrefix, Log: log, Clock: clk,
	}
	if cfg.JWTIssuer != "" {
		if hc.JWTIssuer, err = url.Parse(cfg.JWTIssuer); err != nil {
			return nil, fmt.Errorf("jwt_issuer: %w", err)
		}
	}
	if cfg.JWKSURI != "" {
		if hc.JWKSURI, err = url.Parse(cfg.JWKSURI); err != nil {
			return nil, fmt.Errorf("jwks_uri: %w", err)
		}
	}
	handler, err := oidc.NewHandler(hc)
	if err != nil {
		return nil, err
	}
	if cfg.LogRequests {
		handler = logRequests(log, handler)
	}
	if cfg.AllowInsecureScheme {
		log.Warn("allow_insecure_scheme is enabled: the discovery document names http:// URLs for requests that came over plain HTTP; only use it when the network path to the provider is trusted end to end")
	}

	defer func() {
		if err != nil {
			p.closeListeners()
		}
	}()
	switch {
	case cfg.InsecureAddr != "":
		l, lerr := net.Listen("tcp", cfg.InsecureAddr)
		if lerr != nil {
			return nil, fmt.Errorf("insecure_addr: %w", lerr)
		}
		p.lis = l
		log.Warn("Serving HTTP (insecure)", "address", p.lis.Addr().String())
	case cfg.ListenSocketPath != "":
		// Any local process may read public keys: the socket is 0777, as
		// SPIRE's; a live socket of another process is never taken over.
		l, lerr := unixsock.Listen(cfg.ListenSocketPath, 0o777, 0o755)
		if lerr != nil { // (not assigned to p.lis: a nil *Listener is a non-nil net.Listener)
			return nil, fmt.Errorf("listen_socket_path: %w", lerr)
		}
		p.lis = l
		log.Info("Serving HTTP", "network", "unix", "address", cfg.ListenSocketPath)
	case cfg.ServingCertFile != nil:
		s := cfg.ServingCertFile
		if p.cert, err = servingcert.Load(s.CertFilePath, s.KeyFilePath, s.FileSyncInterval, clk, log.With("subsystem", "serving_cert_file")); err != nil {
			return nil, err
		}
		tcp, lerr := net.Listen("tcp", s.Addr)
		if lerr != nil {
			return nil, fmt.Errorf("serving_cert_file addr: %w", lerr)
		}
		p.lis = tls.NewListener(tcp, p.cert.TLSConfig())
		log.Info("Serving HTTPS using the certificate loaded from disk", "address", tcp.Addr().String(), "cert_file_path", s.CertFilePath,
			"not_after", p.cert.Leaf().NotAfter)
	default:
		return nil, errors.New("no listener configured (serving_cert_file, insecure_addr or listen_socket_path)")
	}
	p.srv = &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}

	if h := cfg.HealthChecks; h != nil {
		// As SPIRE: every interface, so a kubelet reaches it.
		l, lerr := net.Listen("tcp", ":"+strconv.Itoa(h.BindPort))
		if lerr != nil {
			return nil, fmt.Errorf("health_checks: %w", lerr)
		}
		p.healthL = l
		p.health = &http.Server{
			Handler: oidc.NewHealthHandler(oidc.HealthConfig{Source: p.source, Threshold: oidc.HealthThreshold(poll),
				ReadyPath: h.ReadyPath, LivePath: h.LivePath, Clock: clk}),
			ReadHeaderTimeout: 10 * time.Second,
		}
	}
	return p, nil
}

func (p *Provider) closeListeners() {
	for _, l := range []net.Listener{p.lis, p.healthL} {
		if l != nil {
			_ = l.Close()
		}
	}
}

// Addr is where the provider serves (its TCP or unix address).
func (p *Provider) Addr() net.Addr { return p.lis.Addr() }

// HealthAddr is the health checks' address; nil without health_checks.
func (p *Provider) HealthAddr() net.Addr {
	if p.healthL == nil {
		return nil
	}
	return p.healthL.Addr()
}

// Run serves until ctx ends.
func (p *Provider) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return p.source.Run(ctx) })
	if p.cert != nil {
		g.Go(func() error { return p.cert.Run(ctx) })
	}
	serve := func(srv *http.Server, l net.Listener) {
		g.Go(func() error {
			if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		g.Go(func() error {
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil {
				_ = srv.Close()
			}
			return nil
		})
	}
	serve(p.srv, p.lis)
	if p.health != nil {
		serve(p.health, p.healthL)
	}
	p.log.Info("Starting sigil-oidc", "domains", p.cfg.Domains, "address", p.lis.Addr().String())
	return g.Wait()
}

// logRequests logs every request at DEBUG (log_requests).
func logRequests(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.Debug("Incoming request", "remote_addr", r.RemoteAddr, "method", clip.Cut(r.Method, 16),
			"url", clip.Cut(r.URL.String(), 128), "user_agent", clip.Cut(r.UserAgent(), 128))
		next.ServeHTTP(w, r)
	})
}
