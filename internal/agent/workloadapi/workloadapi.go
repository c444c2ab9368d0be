// Package workloadapi is the SPIFFE Workload API (all of FetchX509SVID,
// FetchX509Bundles, FetchJWTSVID, FetchJWTBundles and ValidateJWTSVID), a
// service of the agent socket (internal/agent/endpoints, which owns the
// socket, the gRPC server and caller attestation).
//
// Every call must carry the metadata "workload.spiffe.io: true"
// (InvalidArgument otherwise). The caller is then attested through the
// endpoints (peer credentials, workload attestors, PID reuse check) into
// selectors. The entries whose selectors are all among the caller's are its
// identities; none means PermissionDenied ("no identity issued").
//
// Streams send a full state at once and again after every change that
// affects the caller (see internal/agent/cache). While the caller has
// matching entries but no SVID has been issued yet, FetchX509SVID waits
// (up to Config.IdentityWait, then Unavailable) instead of failing.
package workloadapi

import (
	"context"
	"errors"
	"log/slog"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/clock"
)

// JWTMinter signs a JWT-SVID for an entry. The agent's server-facing half
// implements it by calling the server's NewJWTSVID. Results are cached in
// the cache until half-life, so it is only called on a miss.
type JWTMinter interface {
	MintJWTSVID(ctx context.Context, entry *cache.Entry, audience []string) (token string, err error)
}

// DefaultIdentityWait bounds how long FetchX509SVID waits for the first SVID
// of a caller whose entries have none yet.
const DefaultIdentityWait = 30 * time.Second

// Config configures the service.
type Config struct {
	// Cache is the agent's workload state.
	Cache *cache.Cache
	// JWTMinter signs JWT-SVIDs; nil makes FetchJWTSVID fail with
	// Unavailable for cache misses.
	JWTMinter JWTMinter
	// AllowUnauthenticatedVerifiers lets callers without an identity use
	// FetchX509Bundles, FetchJWTBundles and ValidateJWTSVID with our
	// bundle (no federated one: those come with entries), like SPIRE's
	// allow_unauthenticated_verifiers.
	AllowUnauthenticatedVerifiers bool
	// AllowedForeignJWTClaims are the claims, beyond sub, aud and exp,
	// that ValidateJWTSVID returns for a JWT-SVID of another trust domain
	// (SPIRE's allowed_foreign_jwt_claims); the others are left out.
	AllowedForeignJWTClaims []string
	// IdentityWait; 0 means DefaultIdentityWait.
	IdentityWait time.Duration
	Log          *slog.Logger
	Clock        clock.Clock
}

// Service is the Workload API, to register on the agent endpoints.
type Service struct {
	cfg Config
	log *slog.Logger
	clk clock.Clock
}

// New validates cfg and returns the service.
func New(cfg Config) (*Service, error) {
	if cfg.Cache == nil {
		return nil, errors.New("workload API: cache is required")
	}
	if cfg.IdentityWait <= 0 {
		cfg.IdentityWait = DefaultIdentityWait
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{cfg: cfg, log: log, clk: clock.OrReal(cfg.Clock)}, nil
}

// Register registers the Workload API on the agent's gRPC server.
func (s *Service) Register(r grpc.ServiceRegistrar) {
	workloadpb.RegisterSpiffeWorkloadAPIServer(r, &handler{s: s, der: newDERCache()})
}
