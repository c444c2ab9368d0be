// Package upstreamdisk is an upstream authority backed by a CA certificate
// and key on disk, like SPIRE's UpstreamAuthority "disk" plugin
// (cert_file_path, key_file_path, bundle_file_path). It signs the server's
// intermediate CA.
package upstreamdisk

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/ca"
	"github.com/sigil-spiffe/sigil/internal/clock"
)

// backdate is how far NotBefore is moved back for clock skew.
const backdate = 10 * time.Second

// Upstream signs intermediate CAs with a CA key loaded from disk.
type Upstream struct {
	signer crypto.Signer
	cert   *x509.Certificate // the signing certificate
	// chain is the upstream signing certificate, then any intermediates
	// from the cert file that are not roots.
	chain []*x509.Certificate
	roots []*x509.Certificate
	clk   clock.Clock
}

var _ ca.UpstreamAuthority = (*Upstream)(nil)

// Option configures New.
type Option func(*Upstream)

// WithClock sets the time source (default: the real clock).
func WithClock(c clock.Clock) Option { return func(u *Upstream) { u.clk = clock.OrReal(c) } }

// New loads the upstream CA. certFile holds the signing certificate (PEM),
// optionally followed by its intermediates; keyFile its private key (PKCS#8,
// PKCS#1 or SEC 1 PEM). bundleFile (optional) holds the upstream roots;
// without it the certificate must be self-signed and is itself the root.
func New(certFile, keyFile, bundleFile string, opts ...Option) (*Upstream, error) {
	u := &Upstream{clk: clock.Real{}}
	for _, o := range opts {
		o(u)
	}
	certs, err := readCerts(certFile)
	if err != nil {
		return nil, fmt.Errorf("upstream disk: cert_file_path: %w", err)
	}
	signer, err := readKey(keyFile)
	if err != nil {
		return nil, fmt.Errorf("upstream disk: key_file_path: %w", err)
	}
	leaf := certs[0]
	if !publicKeyEqual(leaf.PublicKey, signer.Public()) {
		return nil, errors.New("upstream disk: the key does not match the certificate")
	}
	if !leaf.BasicConstraintsValid || !leaf.IsCA {
		return nil, errors.New("upstream disk: the certificate is not a CA (basic constraints cA=false)")
	}
	if leaf.KeyUsage != 0 && leaf.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, errors.New("upstream disk: the certificate's key usage lacks keyCertSign")
	}
	u.signer, u.cert = signer, leaf

	if bundleFile == "" {
		if err := leaf.CheckSignatureFrom(leaf); err != nil {
			return nil, fmt.Errorf("upstream disk: without bundle_file_path the certificate must be self-signed: %w", err)
		}
		if len(certs) > 1 {
			return nil, errors.New("upstream disk: without bundle_file_path the cert file must hold only the self-signed certificate")
		}
		u.roots = []*x509.Certificate{leaf}
		u.chain = nil // the signing cert is the root: nothing to chain
	} else {
		roots, err := readCerts(bundleFile)
		if err != nil {
			return nil, fmt.Errorf("upstream disk: bundle_file_path: %w", err)
		}
		u.roots = roots
		for _, c := range certs {
			if !containsCert(roots, c) {
				u.chain = append(u.chain, c)
			}
		}
		rootPool, inter := x509.NewCertPool(), x509.NewCertPool()
		for _, r := range roots {
			rootPool.AddCert(r)
		}
		for _, c := range certs[1:] {
			inter.AddCert(c)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{
			Roots: rootPool, Intermediates: inter, CurrentTime: u.clk.Now(),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		}); err != nil {
			return nil, fmt.Errorf("upstream disk: the certificate does not chain to the bundle: %w", err)
		}
	}
	if !u.clk.Now().Before(leaf.NotAfter) {
		return nil, fmt.Errorf("upstream disk: the certificate expired at %s", leaf.NotAfter.Format(time.RFC3339))
	}
	return u, nil
}

// MintX509CA signs an intermediate CA for the CSR's key. The CSR's subject
// and its single URI SAN (a trust domain SPIFFE ID, no path) are kept. The
// lifetime is preferredTTL capped by the upstream certificate's NotAfter.
func (u *Upstream) MintX509CA(ctx context.Context, csrDER []byte, preferredTTL time.Duration) ([]*x509.Certificate, []*x509.Certificate, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, nil, fmt.Errorf("upstream disk: parse CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, nil, fmt.Errorf("upstream disk: CSR signature: %w", err)
	}
	if len(csr.URIs) != 1 {
		return nil, nil, fmt.Errorf("upstream disk: CSR must have exactly one URI SAN, has %d", len(csr.URIs))
	}
	id, err := spiffeid.FromURI(csr.URIs[0])
	if err != nil {
		return nil, nil, fmt.Errorf("upstream disk: CSR URI SAN: %w", err)
	}
	if id.Path() != "" {
		return nil, nil, fmt.Errorf("upstream disk: CSR SPIFFE ID %q must be a trust domain ID (no path)", id)
	}
	if preferredTTL <= 0 {
		return nil, nil, fmt.Errorf("upstream disk: invalid TTL %s", preferredTTL)
	}
	leaf := u.cert
	now := u.clk.Now()
	if !now.Before(leaf.NotAfter) {
		return nil, nil, fmt.Errorf("upstream disk: the upstream certificate expired at %s", leaf.NotAfter.Format(time.RFC3339))
	}
	notAfter := now.Add(preferredTTL)
	for _, c := range append([]*x509.Certificate{leaf}, u.chain...) {
		if notAfter.After(c.NotAfter) {
			notAfter = c.NotAfter
		}
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, nil, fmt.Errorf("upstream disk: serial: %w", err)
	}
	serial.Add(serial, big.NewInt(1))
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               csr.Subject,
		URIs:                  []*url.URL{id.URL()},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, leaf, csr.PublicKey, u.signer)
	if err != nil {
		return nil, nil, fmt.Errorf("upstream disk: sign intermediate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("upstream disk: parse intermediate: %w", err)
	}
	chain := append([]*x509.Certificate{cert}, u.chain...)
	return chain, append([]*x509.Certificate(nil), u.roots...), nil
}

func containsCert(set []*x509.Certificate, c *x509.Certificate) bool {
	for _, s := range set {
		if s.Equal(c) {
			return true
		}
	}
	return false
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}

func readCerts(path string) ([]*x509.Certificate, error) {
	if path == "" {
		return nil, errors.New("path is empty")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no CERTIFICATE PEM block", path)
	}
	return out, nil
}

func readKey(path string) (crypto.Signer, error) {
	if path == "" {
		return nil, errors.New("path is empty")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, fmt.Errorf("%s: no private key PEM block", path)
		}
		var k any
		switch b.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: parse key: %w", path, err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%s: key of type %T cannot sign", path, k)
		}
		return s, nil
	}
}
