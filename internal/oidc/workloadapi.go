package oidc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/clock"
)

// WorkloadAPIConfig configures a WorkloadAPISource.
type WorkloadAPIConfig struct {
	// Addr is the Workload API address (unix:///path/to/api.sock).
	Addr string
	// TrustDomain is whose JWT bundle is served (the response holds
	// federated ones too).
	TrustDomain spiffeid.TrustDomain
	Log         *slog.Logger
	Clock       clock.Clock
	// ClientOptions are added to the Workload API client's (tests).
	ClientOptions []workloadapi.ClientOption
}

// WorkloadAPISource serves the trust domain's JWT bundle from the agent's
// Workload API: it watches FetchJWTBundles, so a key the server adds or
// removes is served as soon as the agent pushes it. The provider must be a
// registered workload (an entry matching its selectors): the agent answers
// others PermissionDenied, which is logged and retried. While the agent is
// unreachable the last bundle is kept.
type WorkloadAPISource struct {
	held
	cfg WorkloadAPIConfig
	log *slog.Logger

	// lastWarned and warnedAt rate-limit the watch failure warnings (the
	// watch is retried every few seconds while the agent is away).
	lastWarned string
	warnedAt   time.Time
}

// warnInterval is how often the same watch failure is logged at WARN.
const warnInterval = 5 * time.Minute

// NewWorkloadAPISource validates cfg.
func NewWorkloadAPISource(cfg WorkloadAPIConfig) (*WorkloadAPISource, error) {
	if cfg.Addr == "" {
		return nil, errors.New("workload API source: an address is required")
	}
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("workload API source: a trust domain is required")
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &WorkloadAPISource{held: held{clk: clock.OrReal(cfg.Clock)}, cfg: cfg, log: log}, nil
}

// Run watches the Workload API until ctx ends (reconnecting with go-spiffe's
// backoff after errors).
func (s *WorkloadAPISource) Run(ctx context.Context) error {
	opts := append([]workloadapi.ClientOption{workloadapi.WithAddr(s.cfg.Addr)}, s.cfg.ClientOptions...)
	c, err := workloadapi.New(ctx, opts...)
	if err != nil {
		return fmt.Errorf("workload API source: %w", err)
	}
	defer c.Close()
	s.log.Info("Watching the Workload API for JWT bundles", "addr", s.cfg.Addr, "trust_domain", s.cfg.TrustDomain.Name())
	err = c.WatchJWTBundles(ctx, (*jwtWatcher)(s))
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("workload API source: %w", err)
}

type jwtWatcher WorkloadAPISource

func (w *jwtWatcher) OnJWTBundlesUpdate(set *jwtbundle.Set) {
	s := (*WorkloadAPISource)(w)
	s.setConnected(true)
	b, ok := set.Get(s.cfg.TrustDomain)
	if !ok {
		s.set(nil)
		names := make([]string, 0, set.Len())
		for _, b := range set.Bundles() {
			names = append(names, b.TrustDomain().Name())
		}
		sort.Strings(names)
		s.log.Error("The Workload API answered without the bundle of the configured trust domain; keeping the previous keys",
			"trust_domain", s.cfg.TrustDomain.Name(), "bundles", strings.Join(names, ","))
		return
	}
	if s.set(b) {
		s.log.Info("JWT keys updated from the Workload API", "trust_domain", s.cfg.TrustDomain.Name(), "keys", len(b.JWTAuthorities()))
	}
}

func (w *jwtWatcher) OnJWTBundlesWatchError(err error) {
	s := (*WorkloadAPISource)(w)
	s.setConnected(false)
	if errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled {
		return
	}
	// Only the watch goroutine calls this: no lock needed.
	lvl, now := s.log.Debug, s.clk.Now()
	if msg := err.Error(); msg != s.lastWarned || now.Sub(s.warnedAt) >= warnInterval {
		lvl, s.lastWarned, s.warnedAt = s.log.Warn, msg, now
	}
	lvl("Workload API watch failed; serving the last keys and retrying", "addr", s.cfg.Addr, "error", err)
}
