package ca

import (
	"context"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/sigil-spiffe/sigil/internal/datastore"
)

// JWTAuthorityPublisher is an optional interface of an UpstreamAuthority
// (a nested server's upstream): the CA publishes each JWT signing key it
// prepares upstream before using it, so JWT-SVIDs it signs validate
// against the upstream trust domain bundle. The returned keys (all the
// upstream's JWT authorities) are added to the local bundle.
type JWTAuthorityPublisher interface {
	PublishJWTAuthority(ctx context.Context, key datastore.JWTKey) ([]datastore.JWTKey, error)
}

// UpstreamBundle is the upstream trust domain bundle as an
// UpstreamBundleWatcher reports it.
type UpstreamBundle struct {
	X509Authorities []*x509.Certificate
	JWTKeys         []datastore.JWTKey
}

// UpstreamBundleWatcher is an optional interface of an UpstreamAuthority
// that follows the upstream bundle (for instance a root rotation). Run
// calls WatchUpstreamBundle in its own goroutine; the watcher calls update
// with the full upstream bundle whenever it may have changed, until ctx
// ends. The CA appends new authorities to the local bundle.
type UpstreamBundleWatcher interface {
	WatchUpstreamBundle(ctx context.Context, update func(context.Context, UpstreamBundle) error) error
}

// ApplyUpstreamBundle appends the authorities of the upstream bundle that
// the local bundle lacks (expired ones are skipped) and calls
// OnBundleChange when it changed the stored bundle. Removal is left to
// expiry pruning, as for the CA's own authorities.
func (m *Manager) ApplyUpstreamBundle(ctx context.Context, b UpstreamBundle) error {
	changed, err := m.appendUpstream(ctx, b.X509Authorities, b.JWTKeys)
	if changed {
		m.bundleChanged()
	}
	return err
}

func (m *Manager) appendUpstream(ctx context.Context, roots []*x509.Certificate, jwtKeys []datastore.JWTKey) (bool, error) {
	now := m.clk.Now()
	td := m.cfg.TrustDomain.Name()
	have, err := m.storedAuthorities(ctx)
	if err != nil {
		return false, fmt.Errorf("ca: %w", err)
	}
	missing := &datastore.Bundle{TrustDomain: td}
	for _, r := range roots {
		if r == nil || !r.IsCA || !now.Before(r.NotAfter) || have["x:"+string(r.Raw)] {
			continue
		}
		have["x:"+string(r.Raw)] = true
		missing.X509Authorities = append(missing.X509Authorities, datastore.X509Authority{ASN1: r.Raw})
	}
	for _, k := range jwtKeys {
		if k.KeyID == "" || len(k.PublicKey) == 0 || have["j:"+k.KeyID] {
			continue
		}
		if k.ExpiresAt != 0 && !now.Before(time.Unix(k.ExpiresAt, 0)) {
			continue
		}
		if _, err := x509.ParsePKIXPublicKey(k.PublicKey); err != nil {
			m.log.Warn("ignoring an unparsable upstream JWT authority", "kid", k.KeyID, "error", err)
			continue
		}
		have["j:"+k.KeyID] = true
		missing.JWTKeys = append(missing.JWTKeys, k)
	}
	if len(missing.X509Authorities) == 0 && len(missing.JWTKeys) == 0 {
		return false, nil
	}
	if _, err := m.cfg.Bundles.AppendBundle(ctx, missing); err != nil {
		return false, fmt.Errorf("ca: append upstream authorities: %w", err)
	}
	m.log.Info("added upstream authorities to the bundle", "x509_authorities", len(missing.X509Authorities), "jwt_keys", len(missing.JWTKeys))
	return true, nil
}

// publishJWTUpstream publishes a new JWT key upstream when the upstream
// authority supports it, and adds the upstream's JWT keys to the bundle.
func (m *Manager) publishJWTUpstream(ctx context.Context, key datastore.JWTKey) error {
	p, ok := m.cfg.Upstream.(JWTAuthorityPublisher)
	if !ok {
		return nil
	}
	upstreamKeys, err := p.PublishJWTAuthority(ctx, key)
	if err != nil {
		return fmt.Errorf("upstream authority: publish JWT key: %w", err)
	}
	if _, err := m.appendUpstream(ctx, nil, upstreamKeys); err != nil {
		return err
	}
	return nil
}

// usable reports whether the active X.509 CA and JWT key can sign at now.
// Callers hold rotateMu or are in Init.
func (m *Manager) usable(now time.Time) bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.x509s.active != nil && !expired(m.x509s.active, now) &&
		m.jwts.active != nil && !expired(m.jwts.active, now)
}
