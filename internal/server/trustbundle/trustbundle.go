// Package trustbundle keeps, in memory, the X.509 authorities of the
// server's own trust domain as stored in the datastore: the bundle every
// server sharing the database publishes its CA in. The server verifies
// agents' X509-SVIDs against it (an agent may hold an SVID from another
// server's CA) and hands it to downstream servers.
//
// A Source re-reads the stored bundle when told it changed (Changed: the
// entry cache saw the bundle journal move, here or on another server; the
// CA published or pruned an authority) and every RefreshInterval, and
// always adds the local CA's own authorities, so a datastore that cannot
// be read never leaves the server without them.
package trustbundle

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
)

// DefaultRefreshInterval is how often the stored bundle is read without a
// Changed call.
const DefaultRefreshInterval = 30 * time.Second

// Store reads the stored bundle.
type Store interface {
	GetBundle(ctx context.Context, trustDomain string) (*datastore.Bundle, error)
}

// Config configures a Source.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	Store       Store
	// Own returns the local CA's authorities (ca.Manager.X509Authorities).
	Own func() []*x509.Certificate
	// RefreshInterval; 0 is DefaultRefreshInterval.
	RefreshInterval time.Duration
	Clock           clock.Clock
	Log             *slog.Logger
}

// Source is the trust domain's X.509 authorities. Safe for concurrent use.
type Source struct {
	cfg     Config
	clk     clock.Clock
	log     *slog.Logger
	changed chan struct{}

	mu     sync.RWMutex
	stored []*x509.Certificate
}

// New returns a Source holding only the local CA's authorities until the
// first Refresh.
func New(cfg Config) (*Source, error) {
	if cfg.TrustDomain.IsZero() || cfg.Store == nil || cfg.Own == nil {
		return nil, errors.New("trustbundle: trust domain, store and own authorities are required")
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = DefaultRefreshInterval
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Source{cfg: cfg, clk: clock.OrReal(cfg.Clock), log: log, changed: make(chan struct{}, 1)}, nil
}

// X509Authorities returns the stored bundle's unexpired X.509 authorities
// and the local CA's, without duplicates.
func (s *Source) X509Authorities() []*x509.Certificate {
	now := s.clk.Now()
	s.mu.RLock()
	stored := s.stored
	s.mu.RUnlock()
	own := s.cfg.Own()
	out := make([]*x509.Certificate, 0, len(stored)+len(own))
	seen := make(map[string]struct{}, len(stored)+len(own))
	for _, list := range [][]*x509.Certificate{own, stored} {
		for _, c := range list {
			if _, dup := seen[string(c.Raw)]; dup || !now.Before(c.NotAfter) {
				continue
			}
			seen[string(c.Raw)] = struct{}{}
			out = append(out, c)
		}
	}
	return out
}

// Changed tells the Source the stored bundle may have changed; Run reads
// it again. It never blocks.
func (s *Source) Changed() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Refresh reads the stored bundle now.
func (s *Source) Refresh(ctx context.Context) error {
	b, err := s.cfg.Store.GetBundle(ctx, s.cfg.TrustDomain.Name())
	if errors.Is(err, datastore.ErrNotFound) {
		b, err = &datastore.Bundle{}, nil
	}
	if err != nil {
		return fmt.Errorf("trustbundle: read the bundle of %s: %w", s.cfg.TrustDomain.Name(), err)
	}
	certs := make([]*x509.Certificate, 0, len(b.X509Authorities))
	for _, a := range b.X509Authorities {
		c, err := x509.ParseCertificate(a.ASN1)
		if err != nil {
			s.log.Warn("Skipping an unparsable X.509 authority of the stored bundle", "error", err)
			continue
		}
		certs = append(certs, c)
	}
	s.mu.Lock()
	s.stored = certs
	s.mu.Unlock()
	return nil
}

// Run refreshes at once, then on every Changed and every RefreshInterval,
// until ctx ends. Failures are logged and retried.
func (s *Source) Run(ctx context.Context) error {
	for {
		if err := s.Refresh(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("Could not read the trust bundle; keeping the last one read", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.changed:
		case <-s.clk.After(s.cfg.RefreshInterval):
		}
	}
}
