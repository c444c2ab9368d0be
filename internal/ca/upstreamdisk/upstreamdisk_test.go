package upstreamdisk_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/ca/upstreamdisk"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func makeCert(t *testing.T, key *ecdsa.PrivateKey, isCA bool, parent *x509.Certificate, parentKey crypto.Signer, notAfter time.Time) *x509.Certificate {
	t.Helper()
	opts := []testca.Option{testca.Key(key), testca.Subject("upstream"), testca.NotAfter(notAfter), testca.KeyUsage(x509.KeyUsageCertSign)}
	if !isCA {
		opts = append(opts, testca.Template(func(c *x509.Certificate) { c.IsCA, c.KeyUsage = false, x509.KeyUsageDigitalSignature }))
	}
	if parent == nil {
		return testca.New(t, opts...).Cert
	}
	return testca.FromCert(parent, parentKey).Intermediate(t, opts...).Cert
}

func writeCerts(t *testing.T, path string, certs ...*x509.Certificate) string {
	t.Helper()
	var data []byte
	for _, c := range certs {
		data = append(data, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func writeKey(t *testing.T, path string, k *ecdsa.PrivateKey, sec1 bool) string {
	t.Helper()
	var b *pem.Block
	if sec1 {
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		b = &pem.Block{Type: "EC PRIVATE KEY", Bytes: der}
	} else {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		b = &pem.Block{Type: "PRIVATE KEY", Bytes: der}
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(b), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func csr(t *testing.T, key crypto.Signer, uris ...string) []byte {
	t.Helper()
	var us []*url.URL
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		us = append(us, u)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{Organization: []string{"SPIFFE"}}, URIs: us}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestNewValidates(t *testing.T) {
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	rootKey, otherKey := newKey(t), newKey(t)
	root := makeCert(t, rootKey, true, nil, nil, time.Now().Add(time.Hour))
	leafKey := newKey(t)
	notCA := makeCert(t, leafKey, false, nil, nil, time.Now().Add(time.Hour))
	interKey := newKey(t)
	inter := makeCert(t, interKey, true, root, rootKey, time.Now().Add(time.Hour))
	otherRoot := makeCert(t, otherKey, true, nil, nil, time.Now().Add(time.Hour))
	expiredKey := newKey(t)
	expiredCA := makeCert(t, expiredKey, true, nil, nil, time.Now().Add(-time.Minute))

	writeCerts(t, p("root.pem"), root)
	writeKey(t, p("root.key"), rootKey, true)
	writeKey(t, p("other.key"), otherKey, false)
	writeCerts(t, p("notca.pem"), notCA)
	writeKey(t, p("notca.key"), leafKey, false)
	writeCerts(t, p("inter.pem"), inter)
	writeKey(t, p("inter.key"), interKey, false)
	writeCerts(t, p("bundle.pem"), root)
	writeCerts(t, p("otherbundle.pem"), otherRoot)
	writeCerts(t, p("expired.pem"), expiredCA)
	writeKey(t, p("expired.key"), expiredKey, false)

	for name, tc := range map[string]struct {
		cert, key, bundle string
		ok                bool
	}{
		"self-signed, no bundle (SEC1 key)":   {p("root.pem"), p("root.key"), "", true},
		"intermediate with bundle":            {p("inter.pem"), p("inter.key"), p("bundle.pem"), true},
		"key does not match":                  {p("root.pem"), p("other.key"), "", false},
		"not a CA":                            {p("notca.pem"), p("notca.key"), "", false},
		"intermediate without bundle":         {p("inter.pem"), p("inter.key"), "", false},
		"intermediate with an unrelated root": {p("inter.pem"), p("inter.key"), p("otherbundle.pem"), false},
		"expired":                             {p("expired.pem"), p("expired.key"), "", false},
		"missing cert file":                   {p("nope.pem"), p("root.key"), "", false},
		"key file holds no key":               {p("root.pem"), p("root.pem"), "", false},
		"missing bundle file":                 {p("inter.pem"), p("inter.key"), p("nope.pem"), false},
	} {
		_, err := upstreamdisk.New(tc.cert, tc.key, tc.bundle)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok=%v", name, err, tc.ok)
		}
	}
}

func TestMintX509CA(t *testing.T) {
	dir := t.TempDir()
	clk := clock.NewFake(time.Now())
	rootKey := newKey(t)
	root := makeCert(t, rootKey, true, nil, nil, clk.Now().Add(1000*time.Hour))
	interKey := newKey(t)
	inter := makeCert(t, interKey, true, root, rootKey, clk.Now().Add(2*time.Hour))
	up, err := upstreamdisk.New(
		writeCerts(t, filepath.Join(dir, "c.pem"), inter),
		writeKey(t, filepath.Join(dir, "k.pem"), interKey, false),
		writeCerts(t, filepath.Join(dir, "b.pem"), root),
		upstreamdisk.WithClock(clk))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	key := newKey(t)

	chain, roots, err := up.MintX509CA(ctx, csr(t, key, "spiffe://example.org"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || !chain[1].Equal(inter) || len(roots) != 1 || !roots[0].Equal(root) {
		t.Fatalf("chain %d certs, roots %d: want [new, upstream intermediate], [root]", len(chain), len(roots))
	}
	c := chain[0]
	if !c.IsCA || c.KeyUsage&x509.KeyUsageCertSign == 0 || len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://example.org" {
		t.Errorf("minted cert: cA=%v ku=%b uris=%v", c.IsCA, c.KeyUsage, c.URIs)
	}
	if !c.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Error("minted cert is not for the CSR's key")
	}
	if want := clk.Now().Add(time.Hour).Truncate(time.Second); !c.NotAfter.Equal(want) {
		t.Errorf("NotAfter %s, want %s", c.NotAfter, want)
	}
	pool, ip := x509.NewCertPool(), x509.NewCertPool()
	pool.AddCert(root)
	ip.AddCert(inter)
	if _, err := c.Verify(x509.VerifyOptions{Roots: pool, Intermediates: ip, CurrentTime: clk.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("minted cert does not verify to the root: %v", err)
	}

	// The TTL is capped by the upstream certificate's NotAfter.
	chain, _, err = up.MintX509CA(ctx, csr(t, key, "spiffe://example.org"), 100*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !chain[0].NotAfter.Equal(inter.NotAfter) {
		t.Errorf("NotAfter %s, want capped to %s", chain[0].NotAfter, inter.NotAfter)
	}

	for name, der := range map[string][]byte{
		"path in SPIFFE ID": csr(t, key, "spiffe://example.org/x"),
		"no URI":            csr(t, key),
		"two URIs":          csr(t, key, "spiffe://example.org", "spiffe://example.com"),
		"not SPIFFE":        csr(t, key, "https://example.org"),
		"garbage":           []byte("nope"),
	} {
		if _, _, err := up.MintX509CA(ctx, der, time.Hour); err == nil {
			t.Errorf("MintX509CA accepted a CSR with %s", name)
		}
	}
	clk.Add(3 * time.Hour)
	if _, _, err := up.MintX509CA(ctx, csr(t, key, "spiffe://example.org"), time.Hour); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("MintX509CA with an expired upstream: %v", err)
	}
}
