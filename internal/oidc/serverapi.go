package oidc

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/clock"
)

// ServerAPIConfig configures a ServerAPISource.
type ServerAPIConfig struct {
	// Address is the server API's gRPC target in the unix name system
	// (unix:///path/to/api.sock): sigil-server's (or spire-server's) admin
	// socket.
	Address string
	// PollInterval is how often GetBundle is called.
	PollInterval time.Duration
	Log          *slog.Logger
	Clock        clock.Clock
}

// ServerAPISource serves the JWT keys of the server's own bundle, read
// with bundle/v1 GetBundle every PollInterval. A failed poll keeps the
// last keys.
type ServerAPISource struct {
	held
	cfg ServerAPIConfig
	log *slog.Logger
}

// rpcTimeout bounds one GetBundle.
const rpcTimeout = 10 * time.Second

// NewServerAPISource validates cfg.
func NewServerAPISource(cfg ServerAPIConfig) (*ServerAPISource, error) {
	if !strings.HasPrefix(cfg.Address, "unix:") {
		return nil, errors.New("server API source: the address must use the unix name system (unix:///path/to/api.sock)")
	}
	if cfg.PollInterval <= 0 {
		return nil, errors.New("server API source: the poll interval must be positive")
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &ServerAPISource{held: held{clk: clock.OrReal(cfg.Clock)}, cfg: cfg, log: log}, nil
}

// Run polls until ctx ends.
func (s *ServerAPISource) Run(ctx context.Context) error {
	conn, err := grpc.NewClient(s.cfg.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("server API source: %w", err)
	}
	defer conn.Close()
	client := bundlev1.NewBundleClient(conn)
	s.log.Info("Polling the server API for JWT keys", "address", s.cfg.Address, "interval", s.cfg.PollInterval)
	failing := false
	for {
		if err := s.poll(ctx, client); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			lvl := s.log.Debug
			if !failing {
				lvl = s.log.Warn
			}
			lvl("Failed to fetch the bundle from the server API; serving the last keys", "address", s.cfg.Address, "error", err)
			failing = true
		} else if failing {
			s.log.Info("Fetching the bundle from the server API again", "address", s.cfg.Address)
			failing = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.clk.After(s.cfg.PollInterval):
		}
	}
}

func (s *ServerAPISource) poll(ctx context.Context, client bundlev1.BundleClient) error {
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	pb, err := client.GetBundle(ctx, &bundlev1.GetBundleRequest{OutputMask: &types.BundleMask{JwtAuthorities: true}})
	if err != nil {
		return err
	}
	b, err := jwtBundleFromProto(pb)
	if err != nil {
		return err
	}
	if s.set(b) {
		s.log.Info("JWT keys updated from the server API", "trust_domain", b.TrustDomain().Name(), "keys", len(b.JWTAuthorities()))
	}
	return nil
}

// jwtBundleFromProto keeps the JWT authorities of a bundle message; a key
// that does not parse is skipped and logged by the caller's error only if
// none is left (as SPIRE, which skips malformed keys).
func jwtBundleFromProto(pb *types.Bundle) (*jwtbundle.Bundle, error) {
	td, err := spiffeid.TrustDomainFromString(pb.GetTrustDomain())
	if err != nil {
		return nil, fmt.Errorf("bundle trust domain %s: %w", clip.Quote(pb.GetTrustDomain()), err)
	}
	b := jwtbundle.New(td)
	var bad []string
	for _, k := range pb.GetJwtAuthorities() {
		pub, err := x509.ParsePKIXPublicKey(k.GetPublicKey())
		if err != nil || k.GetKeyId() == "" {
			bad = append(bad, clip.Quote(k.GetKeyId()))
			continue
		}
		b.AddJWTAuthority(k.GetKeyId(), pub)
	}
	if len(bad) > 0 && len(b.JWTAuthorities()) == 0 {
		return nil, fmt.Errorf("no usable JWT authority in the bundle of %s (malformed: %s)", td, strings.Join(bad, ", "))
	}
	return b, nil
}
