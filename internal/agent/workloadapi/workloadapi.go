// Package workloadapi serves the SPIFFE Workload API (all of
// FetchX509SVID, FetchX509Bundles, FetchJWTSVID, FetchJWTBundles and
// ValidateJWTSVID) on a unix socket, plus gRPC health and reflection.
//
// Every call must carry the metadata "workload.spiffe.io: true"
// (InvalidArgument otherwise). The caller is identified by its peer
// credentials (SO_PEERCRED), attested by the configured attestors into
// selectors, and then — after attestation, so a process that exited and
// whose PID was recycled meanwhile is caught — the PID's start time is
// checked again. The entries whose selectors are all among the caller's
// are its identities; none means PermissionDenied ("no identity issued").
//
// Streams send a full state at once and again after every change that
// affects the caller (see internal/agent/cache). While the caller has
// matching entries but no SVID has been issued yet, FetchX509SVID waits
// (up to Config.IdentityWait, then Unavailable) instead of failing.
package workloadapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/clock"
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

// JWTMinter signs a JWT-SVID for an entry. The agent's server-facing half
// implements it by calling the server's NewJWTSVID. Results are cached in
// the cache until half-life, so it is only called on a miss.
type JWTMinter interface {
	MintJWTSVID(ctx context.Context, entry *cache.Entry, audience []string) (token string, err error)
}

// DefaultIdentityWait bounds how long FetchX509SVID waits for the first SVID
// of a caller whose entries have none yet.
const DefaultIdentityWait = 30 * time.Second

// Config configures the server.
type Config struct {
	// SocketPath is the unix socket to listen on. Its parent directory is
	// created 0755 when missing; the socket is made 0777 (any local user
	// may call: identity comes from attestation, not file permissions).
	SocketPath string
	// Cache is the agent's workload state.
	Cache *cache.Cache
	// Attestor attests each caller.
	Attestor Attestor
	// JWTMinter signs JWT-SVIDs; nil makes FetchJWTSVID fail with
	// Unavailable for cache misses.
	JWTMinter JWTMinter
	// AllowUnauthenticatedVerifiers lets callers without an identity use
	// FetchX509Bundles, FetchJWTBundles and ValidateJWTSVID (with our
	// bundle and every federated bundle), like SPIRE's
	// allow_unauthenticated_verifiers.
	AllowUnauthenticatedVerifiers bool
	// IdentityWait; 0 means DefaultIdentityWait.
	IdentityWait time.Duration
	Log          *slog.Logger
	Clock        clock.Clock
}

// Server is the Workload API server.
type Server struct {
	cfg   Config
	log   *slog.Logger
	clk   clock.Clock
	ready chan struct{}
}

// New validates cfg and returns a server; Run serves it.
func New(cfg Config) (*Server, error) {
	if cfg.SocketPath == "" {
		return nil, errors.New("workload API: socket path is required")
	}
	if cfg.Cache == nil {
		return nil, errors.New("workload API: cache is required")
	}
	if cfg.Attestor == nil {
		return nil, errors.New("workload API: a workload attestor is required")
	}
	if cfg.IdentityWait <= 0 {
		cfg.IdentityWait = DefaultIdentityWait
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, log: log, clk: clock.OrReal(cfg.Clock), ready: make(chan struct{})}, nil
}

// Ready is closed once the socket accepts connections.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Run listens on the socket and serves until ctx is done; on return the
// socket file is removed if it is still the one Run bound. A socket
// another process serves on is refused, never taken over.
func (s *Server) Run(ctx context.Context) error {
	lis, err := listen(s.cfg.SocketPath)
	if err != nil {
		return err
	}
	defer func() {
		if err := lis.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			s.log.Warn("Failed to remove socket", "socket", s.cfg.SocketPath, "error", err)
		}
	}()

	srv := grpc.NewServer(grpc.Creds(peercred.NewCredentials()))
	workloadpb.RegisterSpiffeWorkloadAPIServer(srv, &handler{s: s, der: newDERCache()})
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(workloadpb.SpiffeWorkloadAPI_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv)

	errCh := make(chan error, 1)
	go func() { errCh <- srv.Serve(lis) }()
	s.log.Info("Workload API listening", "socket", s.cfg.SocketPath)
	close(s.ready)

	select {
	case <-ctx.Done():
		hs.Shutdown()
		// Streams are open-ended: stop rather than drain.
		srv.Stop()
		<-errCh
		return nil
	case err := <-errCh:
		return fmt.Errorf("workload API: serve: %w", err)
	}
}

// listen prepares the socket the way SPIRE does: parent directory 0755,
// socket 0777 (identity comes from attestation, not file permissions); a
// stale socket is replaced, a live one (another agent) refused.
func listen(path string) (*unixsock.Listener, error) {
	lis, err := unixsock.Listen(path, 0o777, 0o755)
	if err != nil {
		return nil, fmt.Errorf("workload API: %w", err)
	}
	return lis, nil
}
