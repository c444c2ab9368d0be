package federation

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
)

// BundleGetter reads a stored bundle (datastore.BundleStore).
type BundleGetter interface {
	GetBundle(ctx context.Context, trustDomain string) (*datastore.Bundle, error)
}

// sourceMaxAge bounds how long the endpoint serves a bundle read from the
// store without reading it again: a write by another server sharing the
// database is served within it. Local writes call Invalidate.
const sourceMaxAge = time.Second

// sourceReadTimeout bounds one read of the store for a request.
const sourceReadTimeout = 5 * time.Second

// OwnBundleSource is the spiffebundle.Source of the bundle endpoint: the
// server's own stored bundle, its refresh hint replaced by the configured
// one (as SPIRE's endpoint), read again at most every second or after
// Invalidate.
type OwnBundleSource struct {
	td    spiffeid.TrustDomain
	store BundleGetter
	hint  time.Duration
	clk   clock.Clock

	mu     sync.Mutex
	cached *spiffebundle.Bundle
	readAt time.Time
}

// NewOwnBundleSource returns the source of td's bundle from store, served
// with refreshHint.
func NewOwnBundleSource(td spiffeid.TrustDomain, store BundleGetter, refreshHint time.Duration, clk clock.Clock) *OwnBundleSource {
	return &OwnBundleSource{td: td, store: store, hint: refreshHint, clk: clock.OrReal(clk)}
}

// Invalidate makes the next request read the store (the bundle changed).
func (s *OwnBundleSource) Invalidate() {
	s.mu.Lock()
	s.cached = nil
	s.mu.Unlock()
}

// GetBundleForTrustDomain implements spiffebundle.Source for the server's
// own trust domain only.
func (s *OwnBundleSource) GetBundleForTrustDomain(td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	if td != s.td {
		return nil, fmt.Errorf("no bundle for trust domain %q", td)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clk.Now()
	if s.cached != nil && now.Sub(s.readAt) < sourceMaxAge && !now.Before(s.readAt) {
		return s.cached, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), sourceReadTimeout)
	defer cancel()
	b, err := s.store.GetBundle(ctx, s.td.Name())
	if err != nil {
		if errors.Is(err, datastore.ErrNotFound) {
			return nil, fmt.Errorf("the server has no bundle yet")
		}
		return nil, fmt.Errorf("read bundle: %w", err)
	}
	sb, err := toSPIFFE(s.td, b)
	if err != nil {
		return nil, err
	}
	sb.SetRefreshHint(s.hint)
	s.cached, s.readAt = sb, now
	return sb, nil
}
