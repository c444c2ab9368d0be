package ca

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/sigil-spiffe/sigil/internal/datastore"
)

// Bounds of the rotation loop's sleep: it wakes at the next scheduled event
// but at least every maxWait (to retry failures and follow clock jumps).
const (
	minWait   = time.Second
	maxWait   = 30 * time.Second
	retryWait = 10 * time.Second // after a failed pass
)

func (m *Manager) nextWait(now time.Time) time.Duration {
	m.mu.RLock()
	t1, t2 := nextEvent(m.x509s), nextEvent(m.jwts)
	m.mu.RUnlock()
	wait := maxWait
	for _, t := range []time.Time{t1, t2} {
		if !t.IsZero() && t.Sub(now) < wait {
			wait = t.Sub(now)
		}
	}
	return max(wait, minWait)
}

// rotate runs one rotation pass at the clock's current time and reports
// whether the stored bundle changed. Callers hold rotateMu and call
// OnBundleChange (after unlocking) when it did.
func (m *Manager) rotate(ctx context.Context) (bundleChanged bool, _ error) {
	now := m.clk.Now()

	m.mu.RLock()
	xs, js := m.x509s, m.jwts
	xs.old = append([]*x509CA(nil), xs.old...)
	js.old = append([]*jwtKey(nil), js.old...)
	m.mu.RUnlock()

	var errs []error
	xs2, xChanged, err := step(now, xs, x509KeyBase, func(keyID string) (*x509CA, error) {
		c, err := m.createX509CA(ctx, keyID, now)
		if err == nil {
			bundleChanged = true // createX509CA published it
		}
		return c, err
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("rotate X.509 CA: %w", err))
	}
	js2, jChanged, err := step(now, js, jwtKeyBase, func(keyID string) (*jwtKey, error) {
		k, err := m.createJWTKey(ctx, keyID, now)
		if err == nil {
			bundleChanged = true
		}
		return k, err
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("rotate JWT key: %w", err))
	}
	m.logTransitions(xs, xs2, js, js2)

	m.mu.Lock()
	m.x509s, m.jwts = xs2, js2
	m.mu.Unlock()

	if xChanged || jChanged {
		m.dirty = true
	}
	if m.dirty {
		if err := m.save(ctx); err != nil {
			errs = append(errs, err)
		} else {
			m.dirty = false
		}
	}
	changed, err := m.publishAll(ctx, now)
	if err != nil {
		errs = append(errs, err)
	}
	bundleChanged = bundleChanged || changed
	return bundleChanged, errors.Join(errs...)
}

func (m *Manager) logTransitions(xs, xs2 slots[*x509CA], js, js2 slots[*jwtKey]) {
	if xs2.next != nil && xs2.next != xs.next {
		m.log.Info("prepared X.509 CA published", "key_id", xs2.next.keyID, "serial", xs2.next.cert.SerialNumber.String(), "not_after", xs2.next.notAfter)
	}
	if xs2.active != nil && xs2.active != xs.active {
		m.log.Info("X.509 CA activated", "key_id", xs2.active.keyID, "serial", xs2.active.cert.SerialNumber.String(), "not_after", xs2.active.notAfter, "self_signed", xs2.active.selfSigned)
	}
	if js2.next != nil && js2.next != js.next {
		m.log.Info("prepared JWT key published", "key_id", js2.next.keyID, "kid", js2.next.kid, "not_after", js2.next.notAfter)
	}
	if js2.active != nil && js2.active != js.active {
		m.log.Info("JWT key activated", "key_id", js2.active.keyID, "kid", js2.active.kid, "not_after", js2.active.notAfter)
	}
}

// createX509CA generates a key under keyID, gets a certificate for it
// (self-signed or from the upstream) and publishes its trust anchors.
func (m *Manager) createX509CA(ctx context.Context, keyID string, now time.Time) (*x509CA, error) {
	signer, err := m.cfg.Keys.GenerateKey(ctx, keyID, m.cfg.KeyType)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	var chain, roots []*x509.Certificate
	if m.cfg.Upstream == nil {
		cert, err := m.selfSign(signer, now)
		if err != nil {
			return nil, err
		}
		chain, roots = []*x509.Certificate{cert}, []*x509.Certificate{cert}
	} else {
		chain, roots, err = m.mintUpstream(ctx, signer, now)
		if err != nil {
			return nil, err
		}
	}
	c := newX509CA(keyID, signer, chain, roots)
	if got := c.notAfter.Sub(now); got < m.cfg.CATTL-backdate {
		m.log.Warn("X.509 CA lifetime is shorter than ca_ttl (capped by the upstream authority)", "ca_ttl", m.cfg.CATTL, "lifetime", got.Round(time.Second))
	}
	var auths []datastore.X509Authority
	for _, r := range roots {
		auths = append(auths, datastore.X509Authority{ASN1: r.Raw})
	}
	if _, err := m.cfg.Bundles.AppendBundle(ctx, &datastore.Bundle{TrustDomain: m.cfg.TrustDomain.Name(), X509Authorities: auths}); err != nil {
		return nil, fmt.Errorf("publish X.509 authority: %w", err)
	}
	return c, nil
}

func (m *Manager) selfSign(signer crypto.Signer, now time.Time) (*x509.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := m.caTemplate(serial, now, now.Add(m.cfg.CATTL))
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("self-sign CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	return cert, nil
}

func (m *Manager) mintUpstream(ctx context.Context, signer crypto.Signer, now time.Time) (chain, roots []*x509.Certificate, err error) {
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: m.cfg.Subject,
		URIs:    []*url.URL{m.tdID.URL()},
	}, signer)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA CSR: %w", err)
	}
	chain, roots, err = m.cfg.Upstream.MintX509CA(ctx, csr, m.cfg.CATTL)
	if err != nil {
		return nil, nil, fmt.Errorf("upstream authority: mint X.509 CA: %w", err)
	}
	if err := m.checkUpstreamResult(signer, chain, roots, now); err != nil {
		return nil, nil, fmt.Errorf("upstream authority returned an unusable CA: %w", err)
	}
	return chain, roots, nil
}

// checkUpstreamResult validates what an upstream authority returned.
func (m *Manager) checkUpstreamResult(signer crypto.Signer, chain, roots []*x509.Certificate, now time.Time) error {
	if len(chain) == 0 || len(roots) == 0 {
		return errors.New("empty chain or roots")
	}
	ca := chain[0]
	if !ca.IsCA || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		return errors.New("certificate is not a CA with keyCertSign")
	}
	if !publicKeyEqual(ca.PublicKey, signer.Public()) {
		return errors.New("certificate is not for the CA key")
	}
	rootPool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	at := now
	if at.Before(ca.NotBefore) {
		at = ca.NotBefore
	}
	if _, err := ca.Verify(x509.VerifyOptions{Roots: rootPool, Intermediates: inter, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("chain does not verify against the upstream roots: %w", err)
	}
	return nil
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}

// createJWTKey generates a JWT signing key under keyID and publishes it.
func (m *Manager) createJWTKey(ctx context.Context, keyID string, now time.Time) (*jwtKey, error) {
	signer, err := m.cfg.Keys.GenerateKey(ctx, keyID, m.cfg.JWTKeyType)
	if err != nil {
		return nil, fmt.Errorf("generate JWT key: %w", err)
	}
	kid, err := newKeyID()
	if err != nil {
		return nil, err
	}
	k, err := m.newJWTKey(keyID, kid, signer, now, now.Add(m.cfg.CATTL))
	if err != nil {
		return nil, err
	}
	pub := datastore.JWTKey{KeyID: k.kid, PublicKey: k.pubDER, ExpiresAt: k.notAfter.Unix()}
	if err := m.publishJWTUpstream(ctx, pub); err != nil {
		return nil, err
	}
	if _, err := m.cfg.Bundles.AppendBundle(ctx, &datastore.Bundle{
		TrustDomain: m.cfg.TrustDomain.Name(),
		JWTKeys:     []datastore.JWTKey{pub},
	}); err != nil {
		return nil, fmt.Errorf("publish JWT key: %w", err)
	}
	return k, nil
}

// publishAll makes sure every live authority is in the stored bundle (it
// repairs a bundle edited or lost underneath) and prunes expired ones. It
// reports whether the stored bundle changed.
func (m *Manager) publishAll(ctx context.Context, now time.Time) (bool, error) {
	td := m.cfg.TrustDomain.Name()
	have, err := m.storedAuthorities(ctx)
	if err != nil {
		return false, err
	}
	missing := &datastore.Bundle{TrustDomain: td}
	m.mu.RLock()
	m.x509s.each(func(c *x509CA) {
		if expired(c, now) {
			return
		}
		for _, r := range c.roots {
			if !have["x:"+string(r.Raw)] && now.Before(r.NotAfter) {
				have["x:"+string(r.Raw)] = true
				missing.X509Authorities = append(missing.X509Authorities, datastore.X509Authority{ASN1: r.Raw})
			}
		}
	})
	m.jwts.each(func(k *jwtKey) {
		if !expired(k, now) && !have["j:"+k.kid] {
			missing.JWTKeys = append(missing.JWTKeys, datastore.JWTKey{KeyID: k.kid, PublicKey: k.pubDER, ExpiresAt: k.notAfter.Unix()})
		}
	})
	m.mu.RUnlock()
	changed := false
	if len(missing.X509Authorities) > 0 || len(missing.JWTKeys) > 0 {
		if _, err := m.cfg.Bundles.AppendBundle(ctx, missing); err != nil {
			return false, fmt.Errorf("publish authorities: %w", err)
		}
		m.log.Info("published missing authorities in the bundle", "x509_authorities", len(missing.X509Authorities), "jwt_keys", len(missing.JWTKeys))
		changed = true
	}
	pruned, err := m.cfg.Bundles.PruneBundle(ctx, td, now)
	if err != nil {
		return changed, fmt.Errorf("prune bundle: %w", err)
	}
	if pruned {
		m.log.Info("pruned expired authorities from the bundle")
	}
	return changed || pruned, nil
}

// storedAuthorities returns the set of authorities in the stored bundle of
// the trust domain (empty when there is none), keyed "x:"+DER for X.509
// authorities and "j:"+key ID for JWT keys.
func (m *Manager) storedAuthorities(ctx context.Context) (map[string]bool, error) {
	stored, err := m.cfg.Bundles.GetBundle(ctx, m.cfg.TrustDomain.Name())
	if err != nil && !errors.Is(err, datastore.ErrNotFound) {
		return nil, fmt.Errorf("read bundle: %w", err)
	}
	have := map[string]bool{}
	if stored != nil {
		for _, a := range stored.X509Authorities {
			have["x:"+string(a.ASN1)] = true
		}
		for _, k := range stored.JWTKeys {
			have["j:"+k.KeyID] = true
		}
	}
	return have, nil
}
