package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var serialLimit = new(big.Int).Lsh(big.NewInt(1), 128)

// newSerial returns a random, positive 128-bit serial number.
func newSerial() (*big.Int, error) {
	for {
		n, err := rand.Int(rand.Reader, serialLimit)
		if err != nil {
			return nil, fmt.Errorf("generate serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// newKeyID returns a random JWT key ID (32 URL-safe characters).
func newKeyID() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate key ID: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// caTemplate is the template of every signing certificate the CA makes (its
// own self-signed roots and downstream intermediates): cA=true,
// keyCertSign+cRLSign, URI SAN spiffe://<td>. Go fills SubjectKeyId.
func (m *Manager) caTemplate(serial *big.Int, now, notAfter time.Time) *x509.Certificate {
	subj := m.cfg.Subject
	if subj.SerialNumber == "" {
		subj.SerialNumber = serial.String() // keeps successive CA subjects distinct
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subj,
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{m.tdID.URL()},
	}
}

func (m *Manager) activeX509() (*x509CA, time.Time, error) {
	now := m.clk.Now()
	m.mu.RLock()
	c := m.x509s.active
	m.mu.RUnlock()
	if c == nil {
		return nil, now, errors.New("ca: no active X.509 CA (Init not called or failed)")
	}
	if !now.Before(c.notAfter) {
		return nil, now, fmt.Errorf("ca: active X.509 CA expired at %s", c.notAfter.Format(time.RFC3339))
	}
	return c, now, nil
}

// checkWorkloadID enforces that id is a leaf SPIFFE ID of our trust domain.
func (m *Manager) checkWorkloadID(id spiffeid.ID) error {
	if id.IsZero() {
		return errors.New("missing SPIFFE ID")
	}
	if !id.MemberOf(m.cfg.TrustDomain) {
		return fmt.Errorf("SPIFFE ID %q is not in trust domain %q", id, m.cfg.TrustDomain)
	}
	if id.Path() == "" {
		return fmt.Errorf("SPIFFE ID %q has no path (an SVID needs a non-root path)", id)
	}
	return nil
}

func checkDNSName(n string) error {
	if n == "" || len(n) > 253 {
		return fmt.Errorf("invalid DNS name %q", n)
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '*' || c == '_') {
			return fmt.Errorf("invalid DNS name %q", n)
		}
	}
	return nil
}

// subjectKeyID computes a key identifier (RFC 7093 method 1: leftmost 160
// bits of the SHA-256 of the subjectPublicKey bits).
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(spki.PublicKey.Bytes)
	return sum[:20], nil
}

// SignX509SVID signs an X509-SVID for p.PublicKey. It returns the leaf, then
// the intermediates a verifier needs (the CA certificate when it is not a
// self-signed root, and upstream intermediates); never the root.
func (m *Manager) SignX509SVID(ctx context.Context, p X509SVIDParams) ([]*x509.Certificate, error) {
	ca, now, err := m.activeX509()
	if err != nil {
		return nil, err
	}
	if err := m.checkWorkloadID(p.SPIFFEID); err != nil {
		return nil, fmt.Errorf("ca: sign X509-SVID: %w", err)
	}
	if err := CheckPublicKey(p.PublicKey); err != nil {
		return nil, fmt.Errorf("ca: sign X509-SVID: %w", err)
	}
	for _, n := range p.DNSNames {
		if err := checkDNSName(n); err != nil {
			return nil, fmt.Errorf("ca: sign X509-SVID: %w", err)
		}
	}
	ttl := p.TTL
	if ttl < 0 {
		return nil, fmt.Errorf("ca: sign X509-SVID: negative TTL %s", ttl)
	}
	if ttl == 0 {
		ttl = m.cfg.X509SVIDTTL
	}
	notAfter := now.Add(ttl)
	if notAfter.After(ca.notAfter) {
		m.log.Debug("X509-SVID lifetime capped to the signing CA's expiry", "spiffe_id", p.SPIFFEID.String(), "requested_ttl", ttl, "ttl", ca.notAfter.Sub(now))
		notAfter = ca.notAfter
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	skid, err := subjectKeyID(p.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("ca: sign X509-SVID: %w", err)
	}
	subj := p.Subject
	if isZeroName(subj) {
		subj = pkix.Name{Country: []string{"US"}, Organization: []string{"SPIFFE"}}
	}
	if len(p.DNSNames) > 0 {
		subj.CommonName = p.DNSNames[0]
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subj,
		URIs:                  []*url.URL{p.SPIFFEID.URL()},
		DNSNames:              p.DNSNames,
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		SubjectKeyId:          skid,
		AuthorityKeyId:        ca.cert.SubjectKeyId,
	}
	leaf, err := m.issueLeaf(tmpl, ca, p.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("ca: sign X509-SVID for %s: %w", p.SPIFFEID, err)
	}
	return append([]*x509.Certificate{leaf}, ca.chainAbove...), nil
}

func (m *Manager) issue(tmpl *x509.Certificate, ca *x509CA, pub crypto.PublicKey) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.signer)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// issueLeaf is issue for an SVID: signed once (createLeaf) when the CA key
// is an in-memory ECDSA key.
func (m *Manager) issueLeaf(tmpl *x509.Certificate, ca *x509CA, pub crypto.PublicKey) (*x509.Certificate, error) {
	key, ok := ca.signer.(*ecdsa.PrivateKey)
	if !ok || !leafSupported(tmpl) {
		return m.issue(tmpl, ca, pub)
	}
	der, err := createLeaf(tmpl, ca.cert, pub, key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// SignDownstreamX509CA signs an intermediate CA certificate for a downstream
// server. It returns the new certificate first, then our chain above it
// (never the root).
func (m *Manager) SignDownstreamX509CA(ctx context.Context, p DownstreamX509CAParams) ([]*x509.Certificate, error) {
	ca, now, err := m.activeX509()
	if err != nil {
		return nil, err
	}
	if err := CheckPublicKey(p.PublicKey); err != nil {
		return nil, fmt.Errorf("ca: sign downstream CA: %w", err)
	}
	ttl := p.TTL
	if ttl < 0 {
		return nil, fmt.Errorf("ca: sign downstream CA: negative TTL %s", ttl)
	}
	if ttl == 0 {
		ttl = m.cfg.CATTL
	}
	notAfter := now.Add(ttl)
	if notAfter.After(ca.notAfter) {
		m.log.Debug("downstream CA lifetime capped to the signing CA's expiry", "requested_ttl", ttl, "ttl", ca.notAfter.Sub(now))
		notAfter = ca.notAfter
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := m.caTemplate(serial, now, notAfter)
	if tmpl.SubjectKeyId, err = subjectKeyID(p.PublicKey); err != nil {
		return nil, fmt.Errorf("ca: sign downstream CA: %w", err)
	}
	cert, err := m.issue(tmpl, ca, p.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("ca: sign downstream CA: %w", err)
	}
	return append([]*x509.Certificate{cert}, ca.chainAbove...), nil
}
