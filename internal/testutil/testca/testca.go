// Package testca is the one test certificate authority of Sigil's tests:
// root and intermediate CAs, X509-SVIDs, plain leaves such as x509pop device
// certificates (with a chosen key type), expired and not-yet-valid variants,
// a JWT signing key, and PEM/DER helpers. Tests build every certificate
// through it instead of calling x509.CreateCertificate themselves.
//
// A certificate is described by a template the package fills with defaults
// (below) and the caller's Options edit; Template gives full control where
// a test needs a certificate no Option describes (a malformed one, say).
//
// Defaults: an ECDSA P-256 key; a random positive serial; valid from an hour
// ago for a day (CAs) or an hour (leaves); CAs have IsCA, CertSign|CRLSign
// and, with TrustDomain, the trust domain's SPIFFE ID as URI SAN (as a SPIFFE
// CA); X509-SVIDs have DigitalSignature|KeyEncipherment|KeyAgreement and
// server+client EKUs (as SPIRE issues them); Leaf certificates
// DigitalSignature and the client EKU.
//
// It imports nothing of Sigil, so any package's tests (internal or external)
// can use it. Import it only from test code.
package testca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// KeyType names a kind of key to generate.
type KeyType int

// Key types. The zero value is ECDSA P-256.
const (
	ECDSAP256 KeyType = iota
	ECDSAP384
	RSA2048
	Ed25519
)

func (k KeyType) String() string {
	switch k {
	case ECDSAP256:
		return "ECDSA P-256"
	case ECDSAP384:
		return "ECDSA P-384"
	case RSA2048:
		return "RSA 2048"
	case Ed25519:
		return "Ed25519"
	}
	return "unknown key type"
}

// NewKey generates a private key of type kt.
func NewKey(tb testing.TB, kt KeyType) crypto.Signer {
	tb.Helper()
	var (
		k   crypto.Signer
		err error
	)
	switch kt {
	case ECDSAP256:
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ECDSAP384:
		k, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case RSA2048:
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	case Ed25519:
		_, k, err = ed25519.GenerateKey(rand.Reader)
	default:
		tb.Fatalf("testca: unknown key type %d", kt)
	}
	if err != nil {
		tb.Fatalf("testca: generate %s key: %v", kt, err)
	}
	return k
}

// NewECKey generates an ECDSA P-256 key, the key most tests use.
func NewECKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	return NewKey(tb, ECDSAP256).(*ecdsa.PrivateKey)
}

// Option edits a certificate before it is signed.
type Option func(*spec)

type spec struct {
	tmpl *x509.Certificate
	key  crypto.Signer
	kt   KeyType
	td   spiffeid.TrustDomain
	// edits run last, in order, on the finished template.
	edits []func(*x509.Certificate)
}

// TrustDomain makes a CA a SPIFFE CA of td: its URI SAN is td's SPIFFE ID
// and its bundles are td's. On a leaf it only records td (use SVID for
// SPIFFE leaves).
func TrustDomain(td spiffeid.TrustDomain) Option { return func(s *spec) { s.td = td } }

// Subject sets the subject's common name.
func Subject(cn string) Option {
	return func(s *spec) { s.tmpl.Subject.CommonName = cn }
}

// SubjectName sets the whole subject.
func SubjectName(n pkix.Name) Option { return func(s *spec) { s.tmpl.Subject = n } }

// Serial sets the serial number.
func Serial(n int64) Option { return func(s *spec) { s.tmpl.SerialNumber = big.NewInt(n) } }

// NotBefore sets the start of validity.
func NotBefore(t time.Time) Option { return func(s *spec) { s.tmpl.NotBefore = t } }

// NotAfter sets the end of validity.
func NotAfter(t time.Time) Option { return func(s *spec) { s.tmpl.NotAfter = t } }

// Validity sets both ends of validity.
func Validity(notBefore, notAfter time.Time) Option {
	return func(s *spec) { s.tmpl.NotBefore, s.tmpl.NotAfter = notBefore, notAfter }
}

// Expired makes a certificate that expired an hour ago (valid the two hours
// before).
func Expired() Option {
	return func(s *spec) {
		now := time.Now()
		s.tmpl.NotBefore, s.tmpl.NotAfter = now.Add(-3*time.Hour), now.Add(-time.Hour)
	}
}

// NotYetValid makes a certificate valid only from an hour from now.
func NotYetValid() Option {
	return func(s *spec) {
		now := time.Now()
		s.tmpl.NotBefore, s.tmpl.NotAfter = now.Add(time.Hour), now.Add(3*time.Hour)
	}
}

// Key signs the certificate for key (its public half) instead of a new
// key.
func Key(key crypto.Signer) Option { return func(s *spec) { s.key = key } }

// KeyOf generates the certificate's key of type kt.
func KeyOf(kt KeyType) Option { return func(s *spec) { s.kt = kt } }

// KeyUsage sets the key usage.
func KeyUsage(ku x509.KeyUsage) Option { return func(s *spec) { s.tmpl.KeyUsage = ku } }

// ExtKeyUsage sets the extended key usages (none when empty).
func ExtKeyUsage(eku ...x509.ExtKeyUsage) Option {
	return func(s *spec) { s.tmpl.ExtKeyUsage = eku }
}

// URIs sets the URI SANs.
func URIs(uris ...*url.URL) Option { return func(s *spec) { s.tmpl.URIs = uris } }

// DNSNames sets the DNS SANs.
func DNSNames(names ...string) Option { return func(s *spec) { s.tmpl.DNSNames = names } }

// Template edits the finished template (after the defaults and every other
// Option), for what no Option describes.
func Template(edit func(*x509.Certificate)) Option {
	return func(s *spec) { s.edits = append(s.edits, edit) }
}

// build applies opts to tmpl and returns it with the certificate's key.
func build(tb testing.TB, tmpl *x509.Certificate, opts []Option) (*spec, crypto.Signer) {
	tb.Helper()
	s := &spec{tmpl: tmpl}
	for _, o := range opts {
		o(s)
	}
	for _, e := range s.edits {
		e(s.tmpl)
	}
	key := s.key
	if key == nil {
		key = NewKey(tb, s.kt)
	}
	return s, key
}

// randomSerial is a random positive 63-bit serial.
func randomSerial(tb testing.TB) *big.Int {
	tb.Helper()
	n, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		tb.Fatalf("testca: serial: %v", err)
	}
	return n.Add(n, big.NewInt(1))
}

// Sign creates the certificate tmpl for pub, signed by signer as parent
// (tmpl itself for a self-signed one), and parses it: the one place tests
// call x509.CreateCertificate.
func Sign(tb testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	tb.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		tb.Fatalf("testca: create certificate: %v", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("testca: parse certificate: %v", err)
	}
	return c
}

// CA is a certificate authority: a root (New) or an intermediate
// (Intermediate) with its key.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// TD is the trust domain the CA was made for (zero without
	// TrustDomain); an intermediate inherits its parent's.
	TD spiffeid.TrustDomain

	parent *CA
}

func caTemplate(tb testing.TB) *x509.Certificate {
	now := time.Now()
	return &x509.Certificate{
		SerialNumber:          randomSerial(tb),
		Subject:               pkix.Name{CommonName: "Sigil test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
}

// New creates a self-signed root CA.
func New(tb testing.TB, opts ...Option) *CA {
	tb.Helper()
	return newCA(tb, nil, opts)
}

// Intermediate creates a CA signed by ca (of ca's trust domain unless an
// Option says otherwise).
func (ca *CA) Intermediate(tb testing.TB, opts ...Option) *CA {
	tb.Helper()
	return newCA(tb, ca, append([]Option{TrustDomain(ca.TD)}, opts...))
}

func newCA(tb testing.TB, parent *CA, opts []Option) *CA {
	tb.Helper()
	tmpl := caTemplate(tb)
	if parent != nil {
		tmpl.Subject.CommonName = "Sigil test intermediate CA"
	}
	// The trust domain's URI goes in before the edits of Template.
	s := &spec{tmpl: tmpl}
	for _, o := range opts {
		o(s)
	}
	if !s.td.IsZero() && tmpl.URIs == nil {
		tmpl.URIs = []*url.URL{s.td.ID().URL()}
	}
	for _, e := range s.edits {
		e(tmpl)
	}
	key := s.key
	if key == nil {
		key = NewKey(tb, s.kt)
	}
	issuer, signer := tmpl, key
	if parent != nil {
		issuer, signer = parent.Cert, parent.Key
	}
	return &CA{Cert: Sign(tb, tmpl, issuer, key.Public(), signer), Key: key, TD: s.td, parent: parent}
}

// FromCert wraps an existing CA certificate and its key (e.g. one the code
// under test issued) so it can issue certificates here.
func FromCert(cert *x509.Certificate, key crypto.Signer) *CA {
	return &CA{Cert: cert, Key: key}
}

// Root is the root CA above ca (ca itself for a root).
func (ca *CA) Root() *CA {
	for ca.parent != nil {
		ca = ca.parent
	}
	return ca
}

// Roots is the root certificate as a slice, as trust bundles want it.
func (ca *CA) Roots() []*x509.Certificate { return []*x509.Certificate{ca.Root().Cert} }

// Chain is ca's certificate and those of its parents up to, not including,
// the root: the intermediates to send after a leaf ca issued. It is empty
// for a root.
func (ca *CA) Chain() []*x509.Certificate {
	var out []*x509.Certificate
	for c := ca; c.parent != nil; c = c.parent {
		out = append(out, c.Cert)
	}
	return out
}

// X509Bundle is ca's trust domain's bundle: its root.
func (ca *CA) X509Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.TD, ca.Roots())
}

// Bundle is ca's trust domain's SPIFFE bundle: its root (no JWT
// authorities: see JWTKey.AddTo).
func (ca *CA) Bundle() *spiffebundle.Bundle {
	return spiffebundle.FromX509Authorities(ca.TD, ca.Roots())
}

func leafTemplate(tb testing.TB) *x509.Certificate {
	now := time.Now()
	return &x509.Certificate{
		SerialNumber:          randomSerial(tb),
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		BasicConstraintsValid: true,
	}
}

// Leaf issues a non-CA certificate, e.g. an x509pop device certificate,
// and returns it with its key. Send it with ca.Chain().
func (ca *CA) Leaf(tb testing.TB, opts ...Option) (*x509.Certificate, crypto.Signer) {
	tb.Helper()
	tmpl := leafTemplate(tb)
	tmpl.Subject.CommonName = "Sigil test leaf"
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	s, key := build(tb, tmpl, opts)
	return Sign(tb, s.tmpl, ca.Cert, key.Public(), ca.Key), key
}

// SVID issues an X509-SVID for id. Its Certificates are the leaf and
// ca.Chain().
func (ca *CA) SVID(tb testing.TB, id spiffeid.ID, opts ...Option) *x509svid.SVID {
	tb.Helper()
	tmpl := leafTemplate(tb)
	tmpl.URIs = []*url.URL{id.URL()}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	s, key := build(tb, tmpl, opts)
	leaf := Sign(tb, s.tmpl, ca.Cert, key.Public(), ca.Key)
	return &x509svid.SVID{ID: id, Certificates: append([]*x509.Certificate{leaf}, ca.Chain()...), PrivateKey: key}
}

// SelfSigned is a self-signed CA certificate (New(tb, opts...).Cert), for
// tests that need an authority to store or compare, not to issue from.
func SelfSigned(tb testing.TB, opts ...Option) *x509.Certificate {
	tb.Helper()
	return New(tb, opts...).Cert
}

// SelfSignedDER is SelfSigned's DER.
func SelfSignedDER(tb testing.TB, opts ...Option) []byte {
	tb.Helper()
	return SelfSigned(tb, opts...).Raw
}

// DER returns the certificates' DER encodings.
func DER(certs ...*x509.Certificate) [][]byte {
	out := make([][]byte, len(certs))
	for i, c := range certs {
		out[i] = c.Raw
	}
	return out
}

// CertsPEM encodes certificates as concatenated PEM CERTIFICATE blocks.
func CertsPEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// ParseCertsPEM decodes the CERTIFICATE blocks of concatenated PEM (other
// blocks are skipped).
func ParseCertsPEM(tb testing.TB, b []byte) []*x509.Certificate {
	tb.Helper()
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			tb.Fatalf("testca: parse certificate: %v", err)
		}
		out = append(out, c)
	}
}

// CSR is a new P-256 key and a certificate request signed with it (no
// subject: an X509-SVID's CSR, whose identity the server sets).
func CSR(tb testing.TB) (*ecdsa.PrivateKey, []byte) {
	tb.Helper()
	key := NewECKey(tb)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		tb.Fatalf("testca: create CSR: %v", err)
	}
	return key, der
}

// KeyPEM encodes a private key as a PKCS#8 PEM PRIVATE KEY block.
func KeyPEM(tb testing.TB, key crypto.Signer) []byte {
	tb.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatalf("testca: marshal key: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// WriteCertsPEM writes certificates as PEM to path (0600) and returns
// path.
func WriteCertsPEM(tb testing.TB, path string, certs ...*x509.Certificate) string {
	tb.Helper()
	writeFile(tb, path, CertsPEM(certs...))
	return path
}

// WriteKeyPEM writes key as PKCS#8 PEM to path (0600) and returns path.
func WriteKeyPEM(tb testing.TB, path string, key crypto.Signer) string {
	tb.Helper()
	writeFile(tb, path, KeyPEM(tb, key))
	return path
}

func writeFile(tb testing.TB, path string, data []byte) {
	tb.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		tb.Fatalf("testca: %v", err)
	}
}

// JWTKey is a JWT-SVID signing key with its key ID.
type JWTKey struct {
	ID  string
	Key *ecdsa.PrivateKey
}

// NewJWTKey generates an ECDSA P-256 JWT signing key with key ID kid.
func NewJWTKey(tb testing.TB, kid string) *JWTKey {
	tb.Helper()
	return &JWTKey{ID: kid, Key: NewECKey(tb)}
}

// AddTo adds the key to b's JWT authorities.
func (k *JWTKey) AddTo(tb testing.TB, b *spiffebundle.Bundle) {
	tb.Helper()
	if err := b.AddJWTAuthority(k.ID, k.Key.Public()); err != nil {
		tb.Fatalf("testca: add JWT authority: %v", err)
	}
}

// JWTBundle is a JWT bundle of td holding only this key.
func (k *JWTKey) JWTBundle(td spiffeid.TrustDomain) *jwtbundle.Bundle {
	return jwtbundle.FromJWTAuthorities(td, map[string]crypto.PublicKey{k.ID: k.Key.Public()})
}

// SignJWTSVID signs a JWT-SVID (ES256, typ JWT, kid) for id and audience,
// issued now and valid for ttl. It returns an error rather than failing a
// test so that it can serve as a fake minter off the test goroutine.
func (k *JWTKey) SignJWTSVID(id spiffeid.ID, audience []string, ttl time.Duration) (string, error) {
	return k.SignJWTSVIDAt(id, audience, time.Now(), ttl)
}

// SignJWTSVIDAt is SignJWTSVID issued at iat (e.g. a fake clock's now)
// instead of now; iat is truncated to the second, as JWT times are.
func (k *JWTKey) SignJWTSVIDAt(id spiffeid.ID, audience []string, iat time.Time, ttl time.Duration) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k.Key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", k.ID))
	if err != nil {
		return "", fmt.Errorf("testca: JWT signer: %w", err)
	}
	return jwt.Signed(signer).Claims(jwt.Claims{
		Subject:  id.String(),
		Audience: jwt.Audience(audience),
		IssuedAt: jwt.NewNumericDate(iat),
		Expiry:   jwt.NewNumericDate(iat.Add(ttl)),
	}).Serialize()
}
