package testca_test

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// An SVID from an intermediate verifies against the root's bundle with the
// intermediate in its chain; one from another CA does not.
func TestSVIDChainsToRoot(t *testing.T) {
	root := testca.New(t, testca.TrustDomain(td))
	inter := root.Intermediate(t)
	id := spiffeid.RequireFromPath(td, "/workload")
	svid := inter.SVID(t, id)
	if len(svid.Certificates) != 2 || svid.Certificates[1] != inter.Cert {
		t.Fatalf("chain: %d certificates, want leaf + intermediate", len(svid.Certificates))
	}
	got, _, err := x509svid.Verify(svid.Certificates, root.X509Bundle())
	if err != nil || got != id {
		t.Fatalf("verify: %v, %v", got, err)
	}
	if inter.Cert.URIs[0].String() != td.IDString() || !inter.Cert.IsCA {
		t.Fatalf("intermediate is not a SPIFFE CA of %s: %v", td, inter.Cert.URIs)
	}
	other := testca.New(t, testca.TrustDomain(td))
	if _, _, err := x509svid.Verify(svid.Certificates, other.X509Bundle()); err == nil {
		t.Fatal("SVID verified against another CA")
	}
	if root.Root() != root || inter.Root() != root || len(root.Chain()) != 0 {
		t.Fatal("Root/Chain of a root")
	}
}

// Leaf keys are of the requested type and the leaf verifies against its
// root for client authentication; Expired and NotYetValid leaves do not.
func TestLeafKeyTypesAndValidity(t *testing.T) {
	root := testca.New(t, testca.Subject("device root"))
	inter := root.Intermediate(t)
	for _, kt := range []testca.KeyType{testca.ECDSAP256, testca.ECDSAP384, testca.RSA2048, testca.Ed25519} {
		leaf, key := inter.Leaf(t, testca.KeyOf(kt), testca.Subject("device-1"))
		switch kt {
		case testca.RSA2048:
			_, ok := key.(*rsa.PrivateKey)
			mustBe(t, kt, ok)
		case testca.Ed25519:
			_, ok := key.(ed25519.PrivateKey)
			mustBe(t, kt, ok)
		default:
			_, ok := key.(*ecdsa.PrivateKey)
			mustBe(t, kt, ok)
		}
		if err := verify(leaf, root, inter, time.Now()); err != nil {
			t.Errorf("%s leaf: %v", kt, err)
		}
		if leaf.Subject.CommonName != "device-1" || leaf.IsCA {
			t.Errorf("%s leaf: CN %q IsCA %v", kt, leaf.Subject.CommonName, leaf.IsCA)
		}
	}
	expired, _ := inter.Leaf(t, testca.Expired())
	if err := verify(expired, root, inter, time.Now()); err == nil {
		t.Error("expired leaf verified")
	}
	future, _ := inter.Leaf(t, testca.NotYetValid())
	if err := verify(future, root, inter, time.Now()); err == nil {
		t.Error("not-yet-valid leaf verified")
	}
	fixed, _ := inter.Leaf(t, testca.Serial(42), testca.Template(func(c *x509.Certificate) { c.DNSNames = []string{"d.example"} }))
	if fixed.SerialNumber.Int64() != 42 || fixed.DNSNames[0] != "d.example" {
		t.Errorf("options not applied: serial %v, DNS %v", fixed.SerialNumber, fixed.DNSNames)
	}
}

func mustBe(t *testing.T, kt testca.KeyType, ok bool) {
	t.Helper()
	if !ok {
		t.Errorf("key of %s has the wrong type", kt)
	}
}

func verify(leaf *x509.Certificate, root, inter *testca.CA, now time.Time) error {
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root.Cert)
	inters.AddCert(inter.Cert)
	_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err
}

// PEM helpers round-trip.
func TestPEM(t *testing.T) {
	ca := testca.New(t)
	leaf, key := ca.Leaf(t)
	dir := t.TempDir()
	certs, err := os.ReadFile(testca.WriteCertsPEM(t, filepath.Join(dir, "c.pem"), leaf, ca.Cert))
	if err != nil {
		t.Fatal(err)
	}
	var n int
	for rest := certs; ; n++ {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
	}
	if n != 2 {
		t.Fatalf("%d PEM blocks, want 2", n)
	}
	kp, err := os.ReadFile(testca.WriteKeyPEM(t, filepath.Join(dir, "k.pem"), key))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(kp)
	parsed, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil || !parsed.(*ecdsa.PrivateKey).Equal(key) {
		t.Fatalf("key PEM: %v", err)
	}
	if d := testca.DER(leaf, ca.Cert); len(d) != 2 || string(d[0]) != string(leaf.Raw) {
		t.Fatal("DER")
	}
}

// A JWT-SVID signed with a JWTKey validates against its JWT bundle.
func TestJWTKey(t *testing.T) {
	k := testca.NewJWTKey(t, "kid-1")
	id := spiffeid.RequireFromPath(td, "/w")
	tok, err := k.SignJWTSVID(id, []string{"aud"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := jwtsvid.ParseAndValidate(tok, k.JWTBundle(td), []string{"aud"})
	if err != nil || svid.ID != id {
		t.Fatalf("validate: %v %v", svid, err)
	}
	b := testca.New(t, testca.TrustDomain(td)).Bundle()
	k.AddTo(t, b)
	if !b.HasJWTAuthority("kid-1") {
		t.Fatal("AddTo")
	}
}
