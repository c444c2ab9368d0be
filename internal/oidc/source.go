// Package oidc is sigil-oidc's OIDC discovery provider, SPIRE
// oidc-discovery-provider's behaviour: it serves
// /.well-known/openid-configuration (issuer, jwks_uri) and /keys (a JWKS of
// the trust domain's JWT-SVID signing keys), so that anything verifying
// OIDC ID tokens (cloud IAM, go-oidc, ...) verifies JWT-SVIDs.
//
// The handler serves from a Source, the JWT bundle of one trust domain
// kept current by its implementation and read on every request:
// WorkloadAPISource (the agent's Workload API, FetchJWTBundles watched:
// a rotation is served at once), ServerAPISource (the server's bundle API
// on its admin socket, polled) and FileSource (a SPIFFE bundle file,
// polled). Each is a component with Run(ctx); none drops the keys it has
// when its origin becomes unreachable.
package oidc

import (
	"errors"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"

	"github.com/sigil-spiffe/sigil/internal/clock"
)

// Source is where the provider's keys come from.
type Source interface {
	// JWTBundle returns the trust domain's current JWT bundle, or
	// ErrNoBundle while none has been obtained yet.
	JWTBundle() (*jwtbundle.Bundle, error)
	// LastContact is when the source last reached its origin (now while
	// it is connected to it); zero before it ever did. Health checks use
	// it.
	LastContact() time.Time
}

// ErrNoBundle is what a Source returns before it has a bundle.
var ErrNoBundle = errors.New("no JWT bundle obtained yet")

// held is the state the sources share: the last bundle obtained and when
// the origin was last reached.
type held struct {
	clk clock.Clock

	mu        sync.RWMutex
	bundle    *jwtbundle.Bundle
	contact   time.Time
	connected bool // contact is "now" (a stream is up)
}

func (h *held) JWTBundle() (*jwtbundle.Bundle, error) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.bundle == nil {
		return nil, ErrNoBundle
	}
	return h.bundle, nil
}

func (h *held) LastContact() time.Time {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.connected {
		return h.clk.Now()
	}
	return h.contact
}

// set records a bundle obtained now (nil: the origin answered without
// one, which keeps the previous bundle). It reports whether the keys
// changed.
func (h *held) set(b *jwtbundle.Bundle) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.contact = h.clk.Now()
	if b == nil || (h.bundle != nil && h.bundle.Equal(b)) {
		return false
	}
	h.bundle = b
	return true
}

// setConnected marks a stream up or down; going down records the moment
// as the last contact.
func (h *held) setConnected(up bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.connected && !up {
		h.contact = h.clk.Now()
	}
	h.connected = up
}
