package fsdelivery

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// testCA is a root plus an intermediate that signs SVIDs, so svid.pem
// carries a chain and bundle.pem only the root.
type testCA struct {
	td         spiffeid.TrustDomain
	root       *x509.Certificate
	inter      *x509.Certificate
	interKey   *ecdsa.PrivateKey
	jwtKey     *ecdsa.PrivateKey
	nextSerial int64
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func sign(t *testing.T, tmpl, parent *x509.Certificate, pub any, key *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newTestCA(t *testing.T, td spiffeid.TrustDomain, now time.Time) *testCA {
	t.Helper()
	rootKey := newKey(t)
	ca := func(serial int64, cn string) *x509.Certificate {
		return &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			URIs:      []*url.URL{td.ID().URL()},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour),
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
		}
	}
	root := sign(t, ca(1, "root "+td.Name()), ca(1, "root "+td.Name()), rootKey.Public(), rootKey)
	interKey := newKey(t)
	inter := sign(t, ca(2, "intermediate "+td.Name()), root, interKey.Public(), rootKey)
	return &testCA{td: td, root: root, inter: inter, interKey: interKey, jwtKey: newKey(t), nextSerial: 100}
}

func (ca *testCA) bundle(t *testing.T) *spiffebundle.Bundle {
	t.Helper()
	b := spiffebundle.New(ca.td)
	b.AddX509Authority(ca.root)
	if err := b.AddJWTAuthority("kid-"+ca.td.Name(), ca.jwtKey.Public()); err != nil {
		t.Fatal(err)
	}
	return b
}

func (ca *testCA) svid(t *testing.T, id spiffeid.ID, notBefore, notAfter time.Time) *cache.X509SVID {
	t.Helper()
	ca.nextSerial++
	key := newKey(t)
	leaf := sign(t, &x509.Certificate{
		SerialNumber: big.NewInt(ca.nextSerial), URIs: []*url.URL{id.URL()},
		NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}, ca.inter, key.Public(), ca.interKey)
	return &cache.X509SVID{Chain: []*x509.Certificate{leaf, ca.inter}, PrivateKey: key}
}

func entry(id string, spiffeID spiffeid.ID, federatesWith ...spiffeid.TrustDomain) *cache.Entry {
	return &cache.Entry{
		ID: id, SPIFFEID: spiffeID, ParentID: spiffeid.RequireFromString("spiffe://example.org/agent"),
		Selectors:     []selector.Selector{{Type: "unix", Value: "uid:" + id}},
		FederatesWith: federatesWith,
	}
}

func mustNoErr(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// generation returns the generation current points to ("" when none).
func generation(dir string) string { return currentGeneration(dir) }

// waitFor polls cond until it holds; it fails the test after a generous
// deadline (a hang, not a performance check).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func perm(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func readGenFile(t *testing.T, dir, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// waitGeneration waits until current points at a generation other than
// prev and the stable links match it exactly (they are updated just after
// the swap), and returns the new generation.
func waitGeneration(t *testing.T, dir, prev string) string {
	t.Helper()
	var gen string
	waitFor(t, "a new generation with its links", func() bool {
		gen = generation(dir)
		if gen == "" || gen == prev {
			return false
		}
		files, err := os.ReadDir(filepath.Join(dir, GenerationsDir, gen))
		if err != nil {
			return false
		}
		want := map[string]bool{}
		for _, f := range files {
			want[f.Name()] = true
			if l, err := os.Readlink(filepath.Join(dir, f.Name())); err != nil || l != filepath.Join(CurrentLink, f.Name()) {
				return false
			}
		}
		des, err := os.ReadDir(dir)
		if err != nil {
			return false
		}
		for _, de := range des {
			if de.Type()&os.ModeSymlink != 0 && de.Name() != CurrentLink && !want[de.Name()] {
				return false
			}
		}
		return true
	})
	return gen
}
