// Package endpoints serves the server APIs: agents reach them over TCP with
// TLS (the server presents its X509-SVID; a client X509-SVID is optional and
// verified when presented), administrators over a unix socket. Interceptors
// establish the rpccontext.Caller, enforce the per-method authorization
// policy and apply the rate limits.
package endpoints

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/peercred"
	"github.com/sigil-spiffe/sigil/internal/server/audit"
	"github.com/sigil-spiffe/sigil/internal/server/ratelimit"
	"github.com/sigil-spiffe/sigil/internal/unixsock"
)

// Message and connection limits.
const (
	MaxRecvMsgSize       = 4 << 20 // gRPC's default, made explicit
	MaxConcurrentStreams = 1000
	handshakeTimeout     = 10 * time.Second
	// DefaultGracefulStopTimeout is how long Run waits for calls to finish
	// after ctx is done before cutting them.
	DefaultGracefulStopTimeout = 5 * time.Second
)

// Keepalive defaults of the TCP server. Agents keep watch streams open for
// hours: the server pings a connection idle for DefaultKeepaliveTime and
// drops it when no answer comes within DefaultKeepaliveTimeout, so dead
// peers (a device that vanished behind a NAT) are reaped. Clients may ping
// every DefaultKeepaliveMinTime, with or without streams: the agent client
// (internal/agent/client) pings every 15s, PermitWithoutStream, which this
// allows without a "too_many_pings" GOAWAY.
const (
	DefaultKeepaliveTime    = time.Minute
	DefaultKeepaliveTimeout = 20 * time.Second
	DefaultKeepaliveMinTime = 5 * time.Second
)

// NodeStore is the subset of the datastore the authorization middleware
// needs to recognise agents.
type NodeStore interface {
	GetNode(ctx context.Context, spiffeID string) (*datastore.AttestedNode, error)
	PromoteNodeSerial(ctx context.Context, spiffeID, serial string) (*datastore.AttestedNode, error)
}

// AdminChecker reports whether entries for id grant admin or downstream
// rights (internal/server/entrycache).
type AdminChecker interface {
	AdminAndDownstream(ctx context.Context, id spiffeid.ID) (admin, downstream bool, err error)
}

// Metrics receives the endpoints' measurements (internal/telemetry's
// Server implements it).
type Metrics interface {
	// RPC is called when a call ends (every method, both listeners), with
	// its gRPC full method and status code.
	RPC(fullMethod, code string, d time.Duration)
	// StreamStarted is called when an authorized stream starts; the func
	// it returns is called when the stream ends.
	StreamStarted(fullMethod string) (done func())
	// Attestation is called when an AttestAgent call ends, with the
	// attestation type the agent sent ("" if none) and the result:
	// "success", "failure" (refused: the client's fault) or "error" (the
	// server could not complete it, a rate limit, the client went away).
	Attestation(attestationType, result string, d time.Duration)
	// RateLimited is called when a rate limit refuses a request
	// (ResourceExhausted): limit is "attestation" or "signing"; or when the
	// TCP listener closes a connection before its TLS handshake
	// ("handshake", see handshakeGate).
	RateLimited(limit string)
	// FailureHeld is called when a failed attestation's answer is held
	// back (its source exceeded its failure budget).
	FailureHeld()
}

// Config configures the endpoints.
type Config struct {
	// TCPAddr is where agents connect (port 0 picks a free port).
	TCPAddr *net.TCPAddr
	// SocketPath is the admin unix socket. Its directory is created 0700
	// when missing; the socket itself is 0600.
	SocketPath  string
	TrustDomain spiffeid.TrustDomain
	// ServerSVID returns the current server X509-SVID (rotated by the caller).
	ServerSVID func() (*tls.Certificate, error)
	// Bundle returns the trust anchors client X509-SVIDs are verified against.
	Bundle func() []*x509.Certificate
	Nodes  NodeStore
	// Entries answers the admin and downstream checks. When it also
	// implements NodeCache (internal/server/entrycache's Cache does), the
	// agent check reads nodes from it (see AgentValidatorConfig.Cache).
	Entries   AdminChecker
	RateLimit ratelimit.Config
	Log       *slog.Logger
	Clock     clock.Clock
	// Metrics is optional.
	Metrics Metrics
	// Audit, when set, writes the audit log (audit_log_enabled): one line
	// per API call (per item of a batch). The admin socket then also reads
	// its callers' credentials (uid, gid, executable).
	Audit *audit.Logger
	// Register registers the API services on each server (TCP and socket).
	Register func(*grpc.Server)

	// KeepaliveTime, KeepaliveTimeout and KeepaliveMinTime tune the TCP
	// server's keepalive (0 means DefaultKeepaliveTime, DefaultKeepaliveTimeout
	// and DefaultKeepaliveMinTime). KeepaliveMinTime is the shortest client
	// ping interval tolerated; clients pinging more often get a GOAWAY.
	KeepaliveTime    time.Duration
	KeepaliveTimeout time.Duration
	KeepaliveMinTime time.Duration
	// GracefulStopTimeout bounds the wait for running calls when stopping
	// (0 means DefaultGracefulStopTimeout); what still runs is then cut.
	GracefulStopTimeout time.Duration
	// HandshakeSlots TLS handshakes are computed at once on the TCP
	// listener; a connection whose ClientHello waited HandshakeWait for a
	// slot is closed, and its client retries (0 means
	// DefaultHandshakeSlots and DefaultHandshakeWait; see handshakeGate).
	HandshakeSlots int
	HandshakeWait  time.Duration
}

// Endpoints runs the TCP and unix socket gRPC servers.
type Endpoints struct {
	cfg      Config
	log      *slog.Logger
	clk      clock.Clock
	limiter  *ratelimit.Limiter
	failures *failureLog
	agents   *AgentValidator
	metrics  Metrics
	audit    *audit.Logger

	ready   chan struct{}
	mu      sync.Mutex
	tcpAddr net.Addr
}

// New validates cfg and returns Endpoints; Run starts serving.
func New(cfg Config) (*Endpoints, error) {
	switch {
	case cfg.TCPAddr == nil:
		return nil, errors.New("endpoints: TCP address is required")
	case cfg.SocketPath == "":
		return nil, errors.New("endpoints: socket path is required")
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("endpoints: trust domain is required")
	case cfg.ServerSVID == nil || cfg.Bundle == nil:
		return nil, errors.New("endpoints: server SVID and bundle sources are required")
	case cfg.Nodes == nil:
		return nil, errors.New("endpoints: node store is required")
	case cfg.Register == nil:
		return nil, errors.New("endpoints: Register is required")
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	clk := clock.OrReal(cfg.Clock)
	rl := cfg.RateLimit
	if rl.Clock == nil {
		rl.Clock = clk
	}
	if cfg.KeepaliveTime <= 0 {
		cfg.KeepaliveTime = DefaultKeepaliveTime
	}
	if cfg.KeepaliveTimeout <= 0 {
		cfg.KeepaliveTimeout = DefaultKeepaliveTimeout
	}
	if cfg.GracefulStopTimeout <= 0 {
		cfg.GracefulStopTimeout = DefaultGracefulStopTimeout
	}
	if cfg.KeepaliveMinTime <= 0 {
		cfg.KeepaliveMinTime = DefaultKeepaliveMinTime
	}
	metrics := cfg.Metrics
	if metrics == nil {
		metrics = noMetrics{}
	}
	nodeCache, _ := cfg.Entries.(NodeCache)
	agents, err := NewAgentValidator(AgentValidatorConfig{Nodes: cfg.Nodes, Cache: nodeCache, Log: log, Clock: clk})
	if err != nil {
		return nil, fmt.Errorf("endpoints: %w", err)
	}
	return &Endpoints{
		cfg:      cfg,
		log:      log,
		clk:      clk,
		limiter:  ratelimit.New(rl),
		failures: newFailureLog(log, rl.Clock),
		agents:   agents,
		metrics:  metrics,
		audit:    cfg.Audit,
		ready:    make(chan struct{}),
	}, nil
}

// Ready is closed once both listeners are bound.
func (e *Endpoints) Ready() <-chan struct{} { return e.ready }

// TCPAddr returns the bound TCP address (nil before Ready).
func (e *Endpoints) TCPAddr() net.Addr {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.tcpAddr
}

// Run serves until ctx is done, then stops both servers and removes the
// socket. It returns nil on a clean stop.
//
// On stop, the context of every stream handler is cancelled with
// ErrShuttingDown as its cause (context.Cause), so long-lived streams (watch
// mode sync) end at once and GracefulStop only waits for them to unwind;
// handlers should end such streams with that cause (codes.Unavailable, so
// clients reconnect to another server). Unary calls are left to finish.
// Whatever is still running after a short grace is cut by Stop.
func (e *Endpoints) Run(ctx context.Context) error {
	tcpL, err := net.ListenTCP("tcp", e.cfg.TCPAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", e.cfg.TCPAddr, err)
	}
	defer tcpL.Close()
	// Owner-only; a socket another server still answers on is refused,
	// and on return the socket is removed only if it is still ours.
	udsL, err := unixsock.Listen(e.cfg.SocketPath, 0o600, 0o700)
	if err != nil {
		return err
	}
	defer func() {
		if err := udsL.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			e.log.Warn("Failed to remove socket", "path", e.cfg.SocketPath, "error", err)
		}
	}()

	// Cancelled (with ErrShuttingDown) when Run starts stopping; every
	// stream handler's context follows it.
	shutdownCtx, shutdown := context.WithCancelCause(context.Background())
	defer shutdown(ErrShuttingDown)

	gate := newHandshakeGate(e.cfg.HandshakeSlots, e.cfg.HandshakeWait, func() { e.metrics.RateLimited("handshake") })
	tcpSrv := grpc.NewServer(
		grpc.Creds(gatedCreds{credentials.NewTLS(e.tlsConfig()), gate}),
		grpc.ChainUnaryInterceptor(e.unaryInterceptor(tcpTransport)),
		grpc.ChainStreamInterceptor(e.streamInterceptor(tcpTransport, shutdownCtx)),
		grpc.MaxRecvMsgSize(MaxRecvMsgSize),
		grpc.MaxConcurrentStreams(MaxConcurrentStreams),
		grpc.ConnectionTimeout(handshakeTimeout),
		// No read buffer of gRPC's own: the TLS connection below already
		// buffers whole records, so gRPC's (32 KiB per connection, held
		// for the connection's life) only doubled it. Every agent keeps
		// a connection open for its watch stream: at 1,000 agents this
		// is 30 % of the server's RSS (bench/RESULTS.md, "Fleet scale").
		grpc.ReadBufferSize(0),
		// See DefaultKeepaliveTime.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: e.cfg.KeepaliveTime, Timeout: e.cfg.KeepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: e.cfg.KeepaliveMinTime, PermitWithoutStream: true}),
	)
	udsOpts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(e.unaryInterceptor(localTransport)),
		grpc.ChainStreamInterceptor(e.streamInterceptor(localTransport, shutdownCtx)),
		grpc.MaxRecvMsgSize(MaxRecvMsgSize),
	}
	if e.audit != nil {
		// The audit log names local callers by their credentials.
		udsOpts = append(udsOpts, grpc.Creds(peercred.NewCredentials()))
	}
	udsSrv := grpc.NewServer(udsOpts...)
	e.cfg.Register(tcpSrv)
	e.cfg.Register(udsSrv)
	hs := health.NewServer()
	hs.SetServingStatus("", grpc_health_v1.HealthCheckResponse_SERVING)
	grpc_health_v1.RegisterHealthServer(udsSrv, hs)

	e.mu.Lock()
	e.tcpAddr = tcpL.Addr()
	e.mu.Unlock()
	close(e.ready)
	e.log.Info("Starting server APIs", "tcp", tcpL.Addr().String(), "socket", e.cfg.SocketPath)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		e.failures.run(gctx)
		return nil
	})
	g.Go(func() error {
		if err := tcpSrv.Serve(tcpL); err != nil {
			return fmt.Errorf("serve TCP: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := udsSrv.Serve(udsL); err != nil {
			return fmt.Errorf("serve socket: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		hs.Shutdown()
		shutdown(ErrShuttingDown)
		var wg sync.WaitGroup
		wg.Go(func() { e.stop(tcpSrv, "tcp", e.cfg.GracefulStopTimeout) })
		wg.Go(func() { e.stop(udsSrv, "socket", e.cfg.GracefulStopTimeout) })
		wg.Wait()
		return nil
	})
	err = g.Wait()
	e.log.Info("Server APIs stopped")
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// ErrShuttingDown is the cause (context.Cause) of the cancellation of
// stream handlers' contexts when the endpoints stop: a codes.Unavailable
// status, which handlers can return as is.
var ErrShuttingDown = status.Error(codes.Unavailable, "server is shutting down")

// stop stops gracefully and, when calls are still running after grace,
// cuts them with Stop. Stop closes every connection but does not wait for
// handlers that ignore their context; stop does not wait for them either
// (GracefulStop's goroutine returns once they do).
func (e *Endpoints) stop(s *grpc.Server, name string, grace time.Duration) {
	done := make(chan struct{})
	go func() { s.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		e.log.Warn("Calls still running after the graceful stop timeout; closing connections", "server", name, "timeout", grace)
		s.Stop()
	}
}

func (e *Endpoints) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			c, err := e.cfg.ServerSVID()
			if err != nil {
				e.log.Error("No server SVID for TLS handshake", "error", err)
				return nil, fmt.Errorf("server SVID unavailable: %w", err)
			}
			return c, nil
		},
		// Attestation needs no client certificate; when one is presented it
		// must be an X509-SVID of our trust domain.
		ClientAuth:            tls.RequestClientCert,
		VerifyPeerCertificate: e.verifyClientCert,
	}
}

func (e *Endpoints) verifyClientCert(raw [][]byte, _ [][]*x509.Certificate) error {
	if len(raw) == 0 {
		return nil
	}
	certs := make([]*x509.Certificate, 0, len(raw))
	for _, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return fmt.Errorf("parse client certificate: %w", err)
		}
		certs = append(certs, c)
	}
	b := x509bundle.FromX509Authorities(e.cfg.TrustDomain, e.cfg.Bundle())
	id, _, err := x509svid.Verify(certs, b, x509svid.WithTime(e.clk.Now()))
	if err != nil {
		return fmt.Errorf("verify client X509-SVID: %w", err)
	}
	if !id.MemberOf(e.cfg.TrustDomain) {
		return fmt.Errorf("client SPIFFE ID %q is not in trust domain %q", id, e.cfg.TrustDomain)
	}
	return nil
}

type noMetrics struct{}

func (noMetrics) RPC(string, string, time.Duration)         {}
func (noMetrics) StreamStarted(string) func()               { return func() {} }
func (noMetrics) Attestation(string, string, time.Duration) {}
func (noMetrics) RateLimited(string)                        {}
func (noMetrics) FailureHeld()                              {}
