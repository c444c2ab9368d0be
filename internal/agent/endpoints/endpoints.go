// Package endpoints owns the agent's unix socket: it binds it safely
// (internal/unixsock: a socket another process answers on is refused, never
// unlinked; a stale one is replaced; on stop only our own socket is
// removed), runs the one gRPC server on it, identifies each caller and
// hands it to the services registered there: the Workload API
// (internal/agent/workloadapi), Envoy SDS (internal/agent/sds) and gRPC
// health (plus reflection).
//
// # Callers
//
// The kernel's peer credentials (SO_PEERCRED and the process start time) are
// read once per connection, at the handshake. A service that needs the
// caller's selectors calls Attest with its call's context: the first call
// runs the agent's workload attestors (internal/agent/workloadattest) for
// the peer's PID and checks afterwards that the PID still names the process
// that connected; the answer (selectors or a gRPC status error) is kept for
// the rest of the call, so a call is attested at most once whatever the
// service does. A service decides when to attest: the Workload API checks
// its security header and its arguments first, as before.
//
// Every call also goes through a panic guard: a handler that panics fails
// its call with Internal and is logged with its stack; the agent keeps
// running. A CallObserver, when configured, is told the method, status code
// and duration of every finished call (the metrics seam).
package endpoints

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/sigil-spiffe/sigil/internal/peercred"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/unixsock"
)

// Attestor produces the selectors of a process: the agent's workload
// attestors, run together (internal/agent/workloadattest). An error means
// the caller could not be attested; its text, which goes to the caller,
// names the failed plugins.
type Attestor interface {
	Attest(ctx context.Context, pid int32) ([]selector.Selector, error)
}

// Service is an API served on the agent socket.
type Service interface {
	// Register registers the service's gRPC handlers. Each service
	// registered is reported SERVING by the health service under its name.
	Register(grpc.ServiceRegistrar)
}

// Config configures the endpoints.
type Config struct {
	// SocketPath is the unix socket to listen on. Its parent directory is
	// created 0755 when missing; the socket is made 0777 (any local user
	// may call: identity comes from attestation, not file permissions), as
	// SPIRE does.
	SocketPath string
	// Attestor attests callers (see Attest).
	Attestor Attestor
	// Services are served on the socket, next to health and reflection.
	Services []Service
	// Observer, if set, is told about every finished call.
	Observer CallObserver
	Log      *slog.Logger
}

// Endpoints serves the agent socket.
type Endpoints struct {
	cfg   Config
	log   *slog.Logger
	ready chan struct{}
}

// New validates cfg; Run serves.
func New(cfg Config) (*Endpoints, error) {
	if cfg.SocketPath == "" {
		return nil, errors.New("agent endpoints: socket path is required")
	}
	if cfg.Attestor == nil {
		return nil, errors.New("agent endpoints: a workload attestor is required")
	}
	for i, s := range cfg.Services {
		if s == nil {
			return nil, fmt.Errorf("agent endpoints: service %d is nil", i)
		}
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Endpoints{cfg: cfg, log: log, ready: make(chan struct{})}, nil
}

// Ready is closed once the socket accepts connections.
func (e *Endpoints) Ready() <-chan struct{} { return e.ready }

// Run listens on the socket and serves until ctx is done; on return the
// socket file is removed if it is still the one Run bound. A socket
// another process serves on is refused, never taken over.
func (e *Endpoints) Run(ctx context.Context) error {
	// SPIRE's layout: parent directory 0755, socket 0777.
	lis, err := unixsock.Listen(e.cfg.SocketPath, 0o777, 0o755)
	if err != nil {
		return fmt.Errorf("agent socket: %w", err)
	}
	defer func() {
		if err := lis.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			e.log.Warn("Failed to remove socket", "socket", e.cfg.SocketPath, "error", err)
		}
	}()

	mw := &middleware{attestor: e.cfg.Attestor, observer: e.cfg.Observer, log: e.log}
	srv := grpc.NewServer(
		grpc.Creds(peercred.NewCredentials()),
		grpc.ChainUnaryInterceptor(mw.unary),
		grpc.ChainStreamInterceptor(mw.stream),
	)
	for _, s := range e.cfg.Services {
		s.Register(srv)
	}
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	for name := range srv.GetServiceInfo() {
		hs.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv)

	errCh := make(chan error, 1)
	go func() { errCh <- srv.Serve(lis) }()
	e.log.Info("Agent socket listening", "socket", e.cfg.SocketPath)
	close(e.ready)

	select {
	case <-ctx.Done():
		hs.Shutdown()
		// Streams are open-ended: stop rather than drain.
		srv.Stop()
		<-errCh
		return nil
	case err := <-errCh:
		return fmt.Errorf("agent socket: serve: %w", err)
	}
}
