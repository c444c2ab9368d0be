package ca_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/ca"
	"github.com/sigil-spiffe/sigil/internal/ca/upstreamdisk"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/keys"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// makeCA creates a CA certificate signed by parent (self-signed when nil).
func makeCA(t *testing.T, name string, parent *x509.Certificate, parentKey crypto.Signer, notAfter time.Time) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key := testca.NewECKey(t)
	opts := []testca.Option{testca.Key(key), testca.Subject(name), testca.NotAfter(notAfter)}
	if parent == nil {
		return testca.New(t, opts...).Cert, key
	}
	return testca.FromCert(parent, parentKey).Intermediate(t, opts...).Cert, key
}

func writePEM(t *testing.T, path string, certs []*x509.Certificate, key crypto.Signer) {
	t.Helper()
	var data []byte
	for _, c := range certs {
		data = append(data, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if key != nil {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		data = append(data, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})...)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestUpstreamSelfSignedRoot(t *testing.T) {
	dir := t.TempDir()
	clk := clock.NewFake(time.Now())
	// The upstream root expires in 3h: our 24h CA is capped to it.
	root, rootKey := makeCA(t, "upstream root", nil, nil, clk.Now().Add(3*time.Hour))
	writePEM(t, filepath.Join(dir, "cert.pem"), []*x509.Certificate{root}, nil)
	writePEM(t, filepath.Join(dir, "key.pem"), nil, rootKey)
	up, err := upstreamdisk.New(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), "", upstreamdisk.WithClock(clk))
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, nil, nil, clk, func(c *ca.Config) { c.Upstream = up })

	auths := e.m.X509Authorities()
	if len(auths) != 1 || !auths[0].Equal(root) {
		t.Fatal("X509Authorities must be the upstream root")
	}
	if b := e.bundleCerts(t); len(b) != 1 || !b[0].Equal(root) {
		t.Fatal("the stored bundle must hold the upstream root, not our intermediate")
	}
	chain := e.sign(t, ca.X509SVIDParams{TTL: 100 * time.Hour})
	if len(chain) != 2 {
		t.Fatalf("chain has %d certs, want leaf + our intermediate", len(chain))
	}
	inter := chain[1]
	checkSigningCert(t, inter)
	if err := inter.CheckSignatureFrom(root); err != nil {
		t.Fatalf("intermediate not signed by the upstream root: %v", err)
	}
	if !inter.NotAfter.Equal(root.NotAfter) {
		t.Errorf("intermediate NotAfter %s not capped to the upstream's %s", inter.NotAfter, root.NotAfter)
	}
	if !chain[0].NotAfter.Equal(inter.NotAfter) {
		t.Errorf("SVID NotAfter %s not capped to the intermediate's %s", chain[0].NotAfter, inter.NotAfter)
	}
	e.verify(t, chain, workload)

	// Downstream CAs chain through our intermediate too.
	ds, err := e.m.SignDownstreamX509CA(t.Context(), ca.DownstreamX509CAParams{PublicKey: newPub(t)})
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 2 || !ds[1].Equal(inter) {
		t.Fatal("downstream chain must be new CA + our intermediate")
	}
}

func TestUpstreamWithIntermediateAndBundle(t *testing.T) {
	dir := t.TempDir()
	clk := clock.NewFake(time.Now())
	root, rootKey := makeCA(t, "root", nil, nil, clk.Now().Add(1000*time.Hour))
	upInter, upKey := makeCA(t, "upstream intermediate", root, rootKey, clk.Now().Add(500*time.Hour))
	writePEM(t, filepath.Join(dir, "cert.pem"), []*x509.Certificate{upInter}, nil)
	writePEM(t, filepath.Join(dir, "key.pem"), nil, upKey)
	writePEM(t, filepath.Join(dir, "bundle.pem"), []*x509.Certificate{root}, nil)
	up, err := upstreamdisk.New(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "bundle.pem"), upstreamdisk.WithClock(clk))
	if err != nil {
		t.Fatal(err)
	}
	store := newMemStore()
	kdir := filepath.Join(dir, "keys")
	km, err := keys.NewDisk(kdir)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, store, km, clk, func(c *ca.Config) { c.Upstream = up; c.KeyType = keys.ECP384 })
	if a := e.m.X509Authorities(); len(a) != 1 || !a[0].Equal(root) {
		t.Fatal("X509Authorities must be the upstream bundle's root")
	}
	chain := e.sign(t, ca.X509SVIDParams{})
	if len(chain) != 3 || !chain[2].Equal(upInter) {
		t.Fatalf("chain has %d certs, want leaf + our intermediate + upstream intermediate", len(chain))
	}
	if chain[1].NotAfter.Sub(clk.Now()) < ca.DefaultCATTL-time.Minute {
		t.Errorf("intermediate lifetime %s shorter than ca_ttl although the upstream allows it", chain[1].NotAfter.Sub(clk.Now()))
	}
	paths := e.verify(t, chain, workload)
	if got := paths[0][len(paths[0])-1]; !got.Equal(root) {
		t.Fatal("the SVID does not verify up to the upstream root")
	}

	// Restart keeps the same intermediate.
	km2, err := keys.NewDisk(kdir)
	if err != nil {
		t.Fatal(err)
	}
	e2 := newEnv(t, store, km2, clk, func(c *ca.Config) { c.Upstream = up; c.KeyType = keys.ECP384 })
	chain2 := e2.sign(t, ca.X509SVIDParams{})
	if !chain2[1].Equal(chain[1]) {
		t.Fatal("restart replaced the upstream-signed intermediate")
	}

	// Switching to a self-signed CA (upstream removed) replaces the
	// intermediate; the upstream root stays published until it expires.
	e3 := newEnv(t, store, km2, clk)
	chain3 := e3.sign(t, ca.X509SVIDParams{})
	if len(chain3) != 1 {
		t.Fatalf("self-signed after upstream removal: chain has %d certs, want 1", len(chain3))
	}
	e3.verify(t, chain3, workload)
	if !contains(e3.m.X509Authorities(), root) {
		t.Fatal("the upstream root must stay published while SVIDs chaining to it are valid")
	}
}

func selfSignedUpstream(t *testing.T) *upstreamdisk.Upstream {
	t.Helper()
	dir := t.TempDir()
	root, rootKey := makeCA(t, "root", nil, nil, time.Now().Add(1000*time.Hour))
	writePEM(t, filepath.Join(dir, "cert.pem"), []*x509.Certificate{root}, nil)
	writePEM(t, filepath.Join(dir, "key.pem"), nil, rootKey)
	up, err := upstreamdisk.New(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), "")
	if err != nil {
		t.Fatal(err)
	}
	return up
}

func makeCSR(t *testing.T) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{td.ID().URL()}}, k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
