package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/url"
	"testing"
	"time"
)

func testCA(t *testing.T, curve elliptic.Curve, subject pkix.Name) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	skid, err := subjectKeyID(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: subject,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(100 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		SubjectKeyId: skid,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// createLeaf encodes every SVID SignX509SVID makes exactly as
// x509.CreateCertificate does (the same TBS bytes, so the same certificate
// but for the signature), for CA keys on every curve, leaf keys of every
// type CheckPublicKey accepts, subjects with and without DNS names, serials
// with the high bit set, validity past 2049 (GeneralizedTime), and the
// certificate verifies against its CA.
func TestCreateLeafMatchesCreateCertificate(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	leafKeys := map[string]crypto.PublicKey{"p256": p256.Public(), "p384": p384.Public(), "rsa": rsaKey.Public(), "ed25519": edPub}
	highSerial, _ := new(big.Int).SetString("80000000000000000000000000000001", 16)
	now := time.Date(2026, 12, 6, 15, 4, 5, 0, time.FixedZone("x", 3600))
	for _, curve := range []elliptic.Curve{elliptic.P256(), elliptic.P384(), elliptic.P521()} {
		for _, caSubject := range []pkix.Name{{Country: []string{"US"}, Organization: []string{"SPIFFE"}}, {CommonName: "upstream", SerialNumber: "7"}} {
			caCert, caKey := testCA(t, curve, caSubject)
			for keyName, pub := range leafKeys {
				skid, err := subjectKeyID(pub)
				if err != nil {
					t.Fatal(err)
				}
				for i, c := range []struct {
					subject  pkix.Name
					dns      []string
					serial   *big.Int
					notAfter time.Time
				}{
					{pkix.Name{Country: []string{"US"}, Organization: []string{"SPIFFE"}}, nil, big.NewInt(12345), now.Add(time.Hour)},
					{pkix.Name{Country: []string{"US"}, Organization: []string{"SPIFFE"}, CommonName: "a.example.org"}, []string{"a.example.org", "*.b.example.org", "c"}, highSerial, now.Add(time.Hour)},
					{pkix.Name{Organization: []string{"Acme", "Sub"}, OrganizationalUnit: []string{"x"}, Locality: []string{"L"}}, []string{"d.example.org"}, big.NewInt(1), time.Date(2051, 1, 1, 0, 0, 0, 0, time.UTC)},
				} {
					t.Run(fmt.Sprintf("%s/%s/%s/%d", curve.Params().Name, caSubject.String(), keyName, i), func(t *testing.T) {
						tmpl := &x509.Certificate{
							SerialNumber:          c.serial,
							Subject:               c.subject,
							URIs:                  []*url.URL{{Scheme: "spiffe", Host: "example.org", Path: "/ns/prod/sa/web"}},
							DNSNames:              c.dns,
							NotBefore:             now.Add(-10 * time.Second),
							NotAfter:              c.notAfter,
							KeyUsage:              x509.KeyUsageDigitalSignature,
							ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
							BasicConstraintsValid: true,
							SubjectKeyId:          skid,
							AuthorityKeyId:        caCert.SubjectKeyId,
						}
						wantDER, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, pub, caKey)
						if err != nil {
							t.Fatal(err)
						}
						want, _ := x509.ParseCertificate(wantDER)
						gotDER, err := createLeaf(tmpl, caCert, pub, caKey)
						if err != nil {
							t.Fatal(err)
						}
						got, err := x509.ParseCertificate(gotDER)
						if err != nil {
							t.Fatal(err)
						}
						if !bytes.Equal(got.RawTBSCertificate, want.RawTBSCertificate) {
							t.Fatalf("TBS differs:\n got %x\nwant %x", got.RawTBSCertificate, want.RawTBSCertificate)
						}
						if got.SignatureAlgorithm != want.SignatureAlgorithm {
							t.Fatalf("signature algorithm %v, want %v", got.SignatureAlgorithm, want.SignatureAlgorithm)
						}
						if err := got.CheckSignatureFrom(caCert); err != nil {
							t.Fatalf("signature: %v", err)
						}
					})
				}
			}
		}
	}
}

// Templates createLeaf does not encode, and a key that is not the CA's,
// are refused (SignX509SVID then uses CreateCertificate).
func TestCreateLeafRefuses(t *testing.T) {
	caCert, caKey := testCA(t, elliptic.P256(), pkix.Name{CommonName: "ca"})
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ok := func() *x509.Certificate {
		return &x509.Certificate{
			SerialNumber: big.NewInt(5), URIs: []*url.URL{{Scheme: "spiffe", Host: "example.org", Path: "/w"}},
			NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			BasicConstraintsValid: true, SubjectKeyId: []byte{1},
		}
	}
	if _, err := createLeaf(ok(), caCert, other.Public(), caKey); err != nil {
		t.Fatalf("supported template: %v", err)
	}
	for name, mod := range map[string]func(*x509.Certificate){
		"CA":          func(c *x509.Certificate) { c.IsCA = true },
		"email":       func(c *x509.Certificate) { c.EmailAddresses = []string{"a@b"} },
		"extra":       func(c *x509.Certificate) { c.ExtraExtensions = []pkix.Extension{{Id: oidExtensionKeyUsage}} },
		"key usage":   func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageKeyEncipherment },
		"one EKU":     func(c *x509.Certificate) { c.ExtKeyUsage = c.ExtKeyUsage[:1] },
		"no serial":   func(c *x509.Certificate) { c.SerialNumber = nil },
		"path len":    func(c *x509.Certificate) { c.MaxPathLenZero = true },
		"non-IA5 DNS": func(c *x509.Certificate) { c.DNSNames = []string{"é.example.org"} },
	} {
		c := ok()
		mod(c)
		if _, err := createLeaf(c, caCert, other.Public(), caKey); err == nil {
			t.Errorf("%s: createLeaf accepted it", name)
		}
	}
	if _, err := createLeaf(ok(), caCert, other.Public(), other); err == nil {
		t.Error("a key that is not the CA's was accepted")
	}
}
