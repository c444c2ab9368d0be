package ca_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sigil-spiffe/sigil/internal/ca"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/keys"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

var (
	td       = spiffeid.RequireTrustDomainFromString("example.org")
	workload = spiffeid.RequireFromString("spiffe://example.org/workload")
	oidKU    = asn1.ObjectIdentifier{2, 5, 29, 15}
)

type env struct {
	m       *ca.Manager
	store   *memStore
	clk     *clock.Fake
	keys    keys.Manager
	changes *atomic.Int64
}

type opt func(*ca.Config)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newEnv builds and initializes a manager. Missing store/keys/clock are
// created; pass cfg options to override.
func newEnv(t *testing.T, store *memStore, km keys.Manager, clk *clock.Fake, opts ...opt) *env {
	t.Helper()
	if store == nil {
		store = newMemStore()
	}
	if km == nil {
		km = keys.NewMemory()
	}
	if clk == nil {
		clk = clock.NewFake(time.Now())
	}
	e := &env{store: store, clk: clk, keys: km, changes: new(atomic.Int64)}
	cfg := ca.Config{
		TrustDomain:    td,
		Keys:           km,
		Journal:        store,
		Bundles:        store,
		Clock:          clk,
		Log:            quietLog(),
		OnBundleChange: func() { e.changes.Add(1) },
	}
	for _, o := range opts {
		o(&cfg)
	}
	m, err := ca.New(cfg)
	if err != nil {
		t.Fatalf("ca.New: %v", err)
	}
	if err := m.Init(context.Background()); err != nil {
		t.Fatalf("Init: %v", err)
	}
	e.m = m
	return e
}

func newPub(t *testing.T) crypto.PublicKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k.Public()
}

func (e *env) storedBundle(t *testing.T) *datastore.Bundle {
	t.Helper()
	b, err := e.store.GetBundle(context.Background(), td.Name())
	if err != nil {
		t.Fatalf("GetBundle: %v", err)
	}
	return b
}

// x509Bundle builds a go-spiffe bundle from the stored bundle.
func (e *env) x509Bundle(t *testing.T) *x509bundle.Bundle {
	t.Helper()
	var certs []*x509.Certificate
	for _, a := range e.storedBundle(t).X509Authorities {
		c, err := x509.ParseCertificate(a.ASN1)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	return x509bundle.FromX509Authorities(td, certs)
}

func (e *env) jwtBundle(t *testing.T) *jwtbundle.Bundle {
	t.Helper()
	keys := map[string]crypto.PublicKey{}
	for _, k := range e.storedBundle(t).JWTKeys {
		pub, err := x509.ParsePKIXPublicKey(k.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		keys[k.KeyID] = pub
	}
	return jwtbundle.FromJWTAuthorities(td, keys)
}

func (e *env) sign(t *testing.T, p ca.X509SVIDParams) []*x509.Certificate {
	t.Helper()
	if p.SPIFFEID.IsZero() {
		p.SPIFFEID = workload
	}
	if p.PublicKey == nil {
		p.PublicKey = newPub(t)
	}
	chain, err := e.m.SignX509SVID(context.Background(), p)
	if err != nil {
		t.Fatalf("SignX509SVID: %v", err)
	}
	return chain
}

// verify checks chain with go-spiffe against X509Authorities() and against
// the stored bundle, at the fake clock's time.
func (e *env) verify(t *testing.T, chain []*x509.Certificate, want spiffeid.ID) [][]*x509.Certificate {
	t.Helper()
	auth := x509bundle.FromX509Authorities(td, e.m.X509Authorities())
	id, paths, err := x509svid.Verify(chain, auth, x509svid.WithTime(e.clk.Now()))
	if err != nil {
		t.Fatalf("x509svid.Verify against X509Authorities(): %v", err)
	}
	if id != want {
		t.Fatalf("verified ID %s, want %s", id, want)
	}
	if _, _, err := x509svid.Verify(chain, e.x509Bundle(t), x509svid.WithTime(e.clk.Now())); err != nil {
		t.Fatalf("x509svid.Verify against the stored bundle: %v", err)
	}
	return paths
}

func isCritical(c *x509.Certificate, oid asn1.ObjectIdentifier) (present, critical bool) {
	for _, ext := range c.Extensions {
		if ext.Id.Equal(oid) {
			return true, ext.Critical
		}
	}
	return false, false
}

func checkSigningCert(t *testing.T, c *x509.Certificate) {
	t.Helper()
	if !c.BasicConstraintsValid || !c.IsCA {
		t.Errorf("signing cert: cA=%v (valid=%v), want true", c.IsCA, c.BasicConstraintsValid)
	}
	if c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("signing cert key usage %b, want keyCertSign|cRLSign", c.KeyUsage)
	}
	if p, crit := isCritical(c, oidKU); !p || !crit {
		t.Errorf("signing cert key usage present=%v critical=%v", p, crit)
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://example.org" {
		t.Errorf("signing cert URIs %v, want [spiffe://example.org]", c.URIs)
	}
	if len(c.SubjectKeyId) == 0 {
		t.Error("signing cert has no SubjectKeyId")
	}
}

func TestX509SVIDFollowsSpec(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	roots := e.m.X509Authorities()
	if len(roots) != 1 {
		t.Fatalf("X509Authorities: %d, want 1", len(roots))
	}
	root := roots[0]
	checkSigningCert(t, root)
	if root.Subject.Country[0] != "US" || root.Subject.Organization[0] != "SPIFFE" {
		t.Errorf("CA subject %v, want C=US, O=SPIFFE", root.Subject)
	}
	if err := root.CheckSignatureFrom(root); err != nil {
		t.Errorf("CA is not self-signed: %v", err)
	}
	if want := e.clk.Now().Add(ca.DefaultCATTL).Truncate(time.Second); !root.NotAfter.Equal(want) {
		t.Errorf("CA NotAfter %s, want now+ca_ttl %s", root.NotAfter, want)
	}

	now := e.clk.Now()
	pub := newPub(t)
	chain := e.sign(t, ca.X509SVIDParams{PublicKey: pub, DNSNames: []string{"web.example.org", "alt.example.org"}})
	if len(chain) != 1 {
		t.Fatalf("self-signed CA: chain has %d certs, want only the leaf (never the root)", len(chain))
	}
	e.verify(t, chain, workload)
	leaf := chain[0]
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(pub) {
		t.Error("leaf is not for the requested key")
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != workload.String() {
		t.Errorf("leaf URIs %v, want exactly [%s]", leaf.URIs, workload)
	}
	if !leaf.BasicConstraintsValid || leaf.IsCA {
		t.Errorf("leaf basic constraints valid=%v cA=%v, want valid, false", leaf.BasicConstraintsValid, leaf.IsCA)
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("leaf key usage %b, want digitalSignature only", leaf.KeyUsage)
	}
	if p, crit := isCritical(leaf, oidKU); !p || !crit {
		t.Errorf("leaf key usage present=%v critical=%v, want critical", p, crit)
	}
	if len(leaf.ExtKeyUsage) != 2 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || leaf.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth {
		t.Errorf("leaf EKU %v, want serverAuth, clientAuth", leaf.ExtKeyUsage)
	}
	if strings.Join(leaf.DNSNames, ",") != "web.example.org,alt.example.org" || leaf.Subject.CommonName != "web.example.org" {
		t.Errorf("leaf DNS %v CN %q", leaf.DNSNames, leaf.Subject.CommonName)
	}
	if string(leaf.AuthorityKeyId) != string(root.SubjectKeyId) {
		t.Error("leaf AuthorityKeyId does not match the CA SubjectKeyId")
	}
	if leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() > 128 {
		t.Errorf("leaf serial %s is not a positive 128-bit number", leaf.SerialNumber)
	}
	if !leaf.NotBefore.Before(now) || now.Sub(leaf.NotBefore) > time.Minute {
		t.Errorf("leaf NotBefore %s not backdated a few seconds from %s", leaf.NotBefore, now)
	}
	if !leaf.NotAfter.Equal(now.Add(ca.DefaultX509SVIDTTL).Truncate(time.Second)) {
		t.Errorf("leaf NotAfter %s, want now+1h (%s)", leaf.NotAfter, now.Add(time.Hour))
	}

	// Serials are random, a custom TTL is honoured, no DNS name => no CN.
	chain2 := e.sign(t, ca.X509SVIDParams{TTL: 10 * time.Minute})
	e.verify(t, chain2, workload)
	if chain2[0].SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Error("two SVIDs share a serial number")
	}
	if chain2[0].Subject.CommonName != "" || len(chain2[0].DNSNames) != 0 {
		t.Errorf("SVID without DNS names has CN %q DNS %v", chain2[0].Subject.CommonName, chain2[0].DNSNames)
	}
	if !chain2[0].NotAfter.Equal(now.Add(10 * time.Minute).Truncate(time.Second)) {
		t.Errorf("TTL 10m: NotAfter %s", chain2[0].NotAfter)
	}

	// A TTL beyond the CA's life is capped to the CA's NotAfter.
	capped := e.sign(t, ca.X509SVIDParams{TTL: 1000 * time.Hour})
	if !capped[0].NotAfter.Equal(root.NotAfter) {
		t.Errorf("capped NotAfter %s, want CA NotAfter %s", capped[0].NotAfter, root.NotAfter)
	}
	e.verify(t, capped, workload)
}

func TestSignRejectsBadParams(t *testing.T) {
	e := newEnv(t, nil, nil, nil)
	ctx := context.Background()
	pub := newPub(t)
	other := spiffeid.RequireFromString("spiffe://other.org/w")
	for name, p := range map[string]ca.X509SVIDParams{
		"foreign trust domain": {SPIFFEID: other, PublicKey: pub},
		"root path":            {SPIFFEID: td.ID(), PublicKey: pub},
		"no ID":                {PublicKey: pub},
		"no key":               {SPIFFEID: workload},
		"negative TTL":         {SPIFFEID: workload, PublicKey: pub, TTL: -time.Second},
		"bad DNS name":         {SPIFFEID: workload, PublicKey: pub, DNSNames: []string{"a b"}},
	} {
		if _, err := e.m.SignX509SVID(ctx, p); err == nil {
			t.Errorf("SignX509SVID accepted %s", name)
		}
	}
	for name, p := range map[string]ca.JWTSVIDParams{
		"foreign trust domain": {SPIFFEID: other, Audience: []string{"a"}},
		"no audience":          {SPIFFEID: workload},
		"empty audience":       {SPIFFEID: workload, Audience: []string{""}},
		"negative TTL":         {SPIFFEID: workload, Audience: []string{"a"}, TTL: -1},
	} {
		if _, err := e.m.SignJWTSVID(ctx, p); err == nil {
			t.Errorf("SignJWTSVID accepted %s", name)
		}
	}
	if _, err := e.m.SignDownstreamX509CA(ctx, ca.DownstreamX509CAParams{}); err == nil {
		t.Error("SignDownstreamX509CA accepted a missing key")
	}
}

func TestUninitializedManagerRefusesToSign(t *testing.T) {
	store := newMemStore()
	m, err := ca.New(ca.Config{TrustDomain: td, Keys: keys.NewMemory(), Journal: store, Bundles: store, Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.SignX509SVID(context.Background(), ca.X509SVIDParams{SPIFFEID: workload, PublicKey: newPub(t)}); err == nil {
		t.Error("SignX509SVID before Init succeeded")
	}
	if err := m.Run(context.Background()); err == nil {
		t.Error("Run before Init succeeded")
	}
	if _, err := ca.New(ca.Config{TrustDomain: td}); err == nil {
		t.Error("New without stores succeeded")
	}
	if _, err := ca.New(ca.Config{TrustDomain: td, Keys: keys.NewMemory(), Journal: store, Bundles: store, KeyType: "dsa"}); err == nil {
		t.Error("New with a bad key type succeeded")
	}
}

// parseJWT verifies a token's signature against bundle and its claims at
// time now (go-spiffe's ParseAndValidate uses the wall clock, so rotation
// tests under a fake clock use this instead).
func parseJWT(t *testing.T, token string, b *jwtbundle.Bundle, aud string, now time.Time) (kid string, claims jwt.Claims) {
	t.Helper()
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.RS256})
	if err != nil {
		t.Fatalf("parse JWT: %v", err)
	}
	kid = tok.Headers[0].KeyID
	key, ok := b.FindJWTAuthority(kid)
	if !ok {
		t.Fatalf("kid %q not in the bundle", kid)
	}
	if err := tok.Claims(key, &claims); err != nil {
		t.Fatalf("JWT signature: %v", err)
	}
	if err := claims.ValidateWithLeeway(jwt.Expected{AnyAudience: []string{aud}, Time: now}, 0); err != nil {
		t.Fatalf("JWT claims at %s: %v", now, err)
	}
	return kid, claims
}

func TestJWTSVIDFollowsSpec(t *testing.T) {
	e := newEnv(t, nil, nil, nil, func(c *ca.Config) { c.JWTIssuer = "https://oidc.example.org" })
	ctx := context.Background()
	now := e.clk.Now()
	tok, err := e.m.SignJWTSVID(ctx, ca.JWTSVIDParams{SPIFFEID: workload, Audience: []string{"svc-a"}})
	if err != nil {
		t.Fatal(err)
	}
	svid, err := jwtsvid.ParseAndValidate(tok, e.jwtBundle(t), []string{"svc-a"})
	if err != nil {
		t.Fatalf("jwtsvid.ParseAndValidate: %v", err)
	}
	if svid.ID != workload || len(svid.Audience) != 1 || svid.Audience[0] != "svc-a" {
		t.Errorf("svid ID %s aud %v", svid.ID, svid.Audience)
	}
	if !svid.Expiry.Equal(now.Add(ca.DefaultJWTSVIDTTL).Truncate(time.Second)) {
		t.Errorf("exp %s, want now+5m", svid.Expiry)
	}
	if _, err := jwtsvid.ParseAndValidate(tok, e.jwtBundle(t), []string{"svc-b"}); err == nil {
		t.Error("token validated for a foreign audience")
	}

	parsed, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	h := parsed.Headers[0]
	if h.Algorithm != "ES256" || h.KeyID == "" || h.ExtraHeaders[jose.HeaderType] != "JWT" {
		t.Errorf("header alg=%s kid=%q typ=%v", h.Algorithm, h.KeyID, h.ExtraHeaders[jose.HeaderType])
	}
	bundle := e.storedBundle(t)
	if len(bundle.JWTKeys) != 1 || bundle.JWTKeys[0].KeyID != h.KeyID || bundle.JWTKeys[0].ExpiresAt != now.Add(ca.DefaultCATTL).Unix() {
		t.Errorf("bundle JWT keys %+v, want the token's kid with ExpiresAt = now+ca_ttl", bundle.JWTKeys)
	}
	var raw map[string]any
	if err := parsed.UnsafeClaimsWithoutVerification(&raw); err != nil {
		t.Fatal(err)
	}
	if raw["sub"] != workload.String() || raw["iss"] != "https://oidc.example.org" {
		t.Errorf("claims %v", raw)
	}
	// One audience is still a list, as spire-server writes it.
	if aud, ok := raw["aud"].([]any); !ok || len(aud) != 1 || aud[0] != "svc-a" {
		t.Errorf("aud claim %#v, want the list [svc-a]", raw["aud"])
	}
	if iat, ok := raw["iat"].(float64); !ok || int64(iat) != now.Unix() {
		t.Errorf("iat %v, want %d", raw["iat"], now.Unix())
	}

	// Several audiences: an array; all accepted.
	tok2, err := e.m.SignJWTSVID(ctx, ca.JWTSVIDParams{SPIFFEID: workload, Audience: []string{"a", "b"}, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	svid2, err := jwtsvid.ParseAndValidate(tok2, e.jwtBundle(t), []string{"b"})
	if err != nil {
		t.Fatal(err)
	}
	if len(svid2.Audience) != 2 || !svid2.Expiry.Equal(now.Add(time.Minute).Truncate(time.Second)) {
		t.Errorf("aud %v exp %s", svid2.Audience, svid2.Expiry)
	}

	// exp is capped to the key's expiry.
	tok3, err := e.m.SignJWTSVID(ctx, ca.JWTSVIDParams{SPIFFEID: workload, Audience: []string{"a"}, TTL: 1000 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	svid3, err := jwtsvid.ParseAndValidate(tok3, e.jwtBundle(t), []string{"a"})
	if err != nil {
		t.Fatal(err)
	}
	if svid3.Expiry.Unix() != bundle.JWTKeys[0].ExpiresAt {
		t.Errorf("capped exp %s, want the key's expiry %d", svid3.Expiry, bundle.JWTKeys[0].ExpiresAt)
	}
}

func TestKeyTypes(t *testing.T) {
	for _, tc := range []struct {
		typ keys.Type
		alg string
	}{{keys.ECP384, "ES384"}, {keys.RSA2048, "RS256"}, {keys.ECP256, "ES256"}} {
		t.Run(string(tc.typ), func(t *testing.T) {
			e := newEnv(t, nil, nil, nil, func(c *ca.Config) { c.KeyType, c.JWTKeyType = tc.typ, tc.typ })
			root := e.m.X509Authorities()[0]
			if got, err := keys.TypeOf(root.PublicKey); err != nil || got != tc.typ {
				t.Fatalf("CA key type %s (%v), want %s", got, err, tc.typ)
			}
			e.verify(t, e.sign(t, ca.X509SVIDParams{}), workload)
			tok, err := e.m.SignJWTSVID(context.Background(), ca.JWTSVIDParams{SPIFFEID: workload, Audience: []string{"x"}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := jwtsvid.ParseAndValidate(tok, e.jwtBundle(t), []string{"x"}); err != nil {
				t.Fatalf("ParseAndValidate: %v", err)
			}
			parsed, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.SignatureAlgorithm(tc.alg)})
			if err != nil || parsed.Headers[0].Algorithm != tc.alg {
				t.Fatalf("alg: %v %v, want %s", err, parsed, tc.alg)
			}
		})
	}
}

// opaqueKeys hands out signers that hide their concrete type (like a
// hardware key would), exercising the generic crypto.Signer paths.
type opaqueKeys struct{ *keys.Memory }

type opaque struct{ crypto.Signer }

func (o opaqueKeys) GenerateKey(ctx context.Context, id string, t keys.Type) (crypto.Signer, error) {
	k, err := o.Memory.GenerateKey(ctx, id, t)
	return opaque{k}, err
}

func (o opaqueKeys) GetKey(ctx context.Context, id string) (crypto.Signer, error) {
	k, err := o.Memory.GetKey(ctx, id)
	return opaque{k}, err
}

func TestOpaqueSigners(t *testing.T) {
	for _, typ := range []keys.Type{keys.ECP256, keys.ECP384, keys.RSA2048} {
		e := newEnv(t, nil, opaqueKeys{keys.NewMemory()}, nil, func(c *ca.Config) { c.KeyType, c.JWTKeyType = typ, typ })
		e.verify(t, e.sign(t, ca.X509SVIDParams{}), workload)
		tok, err := e.m.SignJWTSVID(context.Background(), ca.JWTSVIDParams{SPIFFEID: workload, Audience: []string{"x"}})
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		if _, err := jwtsvid.ParseAndValidate(tok, e.jwtBundle(t), []string{"x"}); err != nil {
			t.Fatalf("%s: ParseAndValidate: %v", typ, err)
		}
	}
}

func TestDownstreamX509CA(t *testing.T) {
	e := newEnv(t, nil, nil, nil, func(c *ca.Config) { c.CATTL = 2 * time.Hour })
	ctx := context.Background()
	dsKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := e.m.SignDownstreamX509CA(ctx, ca.DownstreamX509CAParams{PublicKey: dsKey.Public(), TTL: 10 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 1 {
		t.Fatalf("downstream chain has %d certs, want 1 (no root)", len(chain))
	}
	ds := chain[0]
	checkSigningCert(t, ds)
	root := e.m.X509Authorities()[0]
	if !ds.NotAfter.Equal(root.NotAfter) {
		t.Errorf("downstream NotAfter %s not capped to the CA's %s", ds.NotAfter, root.NotAfter)
	}
	// The downstream CA can issue SVIDs that verify against our bundle.
	leaf, _ := testca.FromCert(ds, dsKey).Leaf(t, testca.Serial(1), testca.Subject("x"), testca.URIs(workload.URL()),
		testca.Validity(e.clk.Now().Add(-time.Second), e.clk.Now().Add(time.Minute)), testca.ExtKeyUsage())
	e.verify(t, append([]*x509.Certificate{leaf}, chain...), workload)
}

func TestRestartKeepsCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	store := newMemStore()
	clk := clock.NewFake(time.Now())
	open := func() *env {
		km, err := keys.NewDisk(dir)
		if err != nil {
			t.Fatal(err)
		}
		return newEnv(t, store, km, clk)
	}
	e1 := open()
	root1 := e1.m.X509Authorities()[0]
	tok1, err := e1.m.SignJWTSVID(context.Background(), ca.JWTSVIDParams{SPIFFEID: workload, Audience: []string{"a"}})
	if err != nil {
		t.Fatal(err)
	}
	seq1 := e1.storedBundle(t).SequenceNumber

	clk.Add(time.Hour)
	e2 := open()
	roots := e2.m.X509Authorities()
	if len(roots) != 1 || !roots[0].Equal(root1) {
		t.Fatalf("after restart the CA changed")
	}
	chain := e2.sign(t, ca.X509SVIDParams{})
	if err := chain[0].CheckSignatureFrom(root1); err != nil {
		t.Fatalf("after restart SVIDs are not signed by the same CA: %v", err)
	}
	e2.verify(t, chain, workload)
	tok2, err := e2.m.SignJWTSVID(context.Background(), ca.JWTSVIDParams{SPIFFEID: workload, Audience: []string{"a"}})
	if err != nil {
		t.Fatal(err)
	}
	if kid(t, tok1) != kid(t, tok2) {
		t.Fatalf("after restart the JWT kid changed: %s -> %s", kid(t, tok1), kid(t, tok2))
	}
	if seq := e2.storedBundle(t).SequenceNumber; seq != seq1 || e2.changes.Load() != 0 {
		t.Errorf("restart rewrote the bundle (seq %d -> %d, %d change callbacks)", seq1, seq, e2.changes.Load())
	}
}

func TestLostKeysAreReplacedButOldCAStaysPublished(t *testing.T) {
	store := newMemStore()
	clk := clock.NewFake(time.Now())
	e1 := newEnv(t, store, keys.NewMemory(), clk)
	root1 := e1.m.X509Authorities()[0]
	// Restart with an empty key manager: the journal's keys are gone.
	e2 := newEnv(t, store, keys.NewMemory(), clk)
	roots := e2.m.X509Authorities()
	if len(roots) != 2 {
		t.Fatalf("X509Authorities after key loss: %d, want old + new", len(roots))
	}
	chain := e2.sign(t, ca.X509SVIDParams{})
	if chain[0].CheckSignatureFrom(root1) == nil {
		t.Fatal("signed with the CA whose key was lost")
	}
	e2.verify(t, chain, workload)
	if n := len(e2.storedBundle(t).X509Authorities); n != 2 {
		t.Fatalf("stored bundle has %d authorities, want 2", n)
	}
	if e2.changes.Load() == 0 {
		t.Error("OnBundleChange not called after publishing the replacement CA")
	}
}

func kid(t *testing.T, token string) string {
	t.Helper()
	p, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.RS256})
	if err != nil {
		t.Fatal(err)
	}
	return p.Headers[0].KeyID
}

// A journal holding another trust domain's CA (the datastore of a server
// restarted with another trust_domain) fails Init and changes nothing:
// neither the journal nor any bundle.
func TestJournalOfAnotherTrustDomain(t *testing.T) {
	store := newMemStore()
	clk := clock.NewFake(time.Now())
	km := keys.NewMemory()
	newEnv(t, store, km, clk)
	journal, err := store.GetCAJournal(context.Background(), ca.DefaultJournalName)
	if err != nil {
		t.Fatal(err)
	}
	writes := store.writes

	other := spiffeid.RequireTrustDomainFromString("other.org")
	m, err := ca.New(ca.Config{TrustDomain: other, Keys: km, Journal: store, Bundles: store, Clock: clk, Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	err = m.Init(context.Background())
	var mismatch *ca.TrustDomainMismatchError
	if !errors.As(err, &mismatch) || mismatch.Journal != td || mismatch.Configured != other {
		t.Fatalf("Init with another trust domain: %v, want a TrustDomainMismatchError (example.org, other.org)", err)
	}
	if want := "ca: the CA journal holds a CA of trust domain example.org, not of the configured other.org"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	after, err := store.GetCAJournal(context.Background(), ca.DefaultJournalName)
	if err != nil || !bytes.Equal(after, journal) {
		t.Fatalf("journal rewritten (%v)", err)
	}
	if store.writes != writes {
		t.Fatal("a bundle was written")
	}
	if _, err := m.SignJWTSVID(context.Background(), ca.JWTSVIDParams{SPIFFEID: spiffeid.RequireFromString("spiffe://other.org/w"), Audience: []string{"a"}}); err == nil {
		t.Fatal("a manager whose Init failed signs")
	}

	// Once that CA has expired, the journal no longer ties the datastore
	// to its trust domain.
	clk.Add(ca.DefaultCATTL + time.Hour)
	newEnv(t, store, km, clk, func(c *ca.Config) { c.TrustDomain = other })
}
