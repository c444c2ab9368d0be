package fsdelivery

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// testCA is a root plus an intermediate that signs SVIDs (testca), so
// svid.pem carries a chain and bundle.pem only the root.
type testCA struct {
	inter *testca.CA
	jwt   *testca.JWTKey
}

func newTestCA(t *testing.T, td spiffeid.TrustDomain, now time.Time) *testCA {
	t.Helper()
	validity := testca.Validity(now.Add(-time.Hour), now.Add(48*time.Hour))
	root := testca.New(t, testca.TrustDomain(td), testca.Serial(1), testca.Subject("root "+td.Name()), validity)
	inter := root.Intermediate(t, testca.Serial(2), testca.Subject("intermediate "+td.Name()), validity)
	return &testCA{inter: inter, jwt: testca.NewJWTKey(t, "kid-"+td.Name())}
}

func (ca *testCA) bundle(t *testing.T) *spiffebundle.Bundle {
	t.Helper()
	b := ca.inter.Bundle()
	ca.jwt.AddTo(t, b)
	return b
}

func (ca *testCA) svid(t *testing.T, id spiffeid.ID, notBefore, notAfter time.Time) *cache.X509SVID {
	t.Helper()
	s := ca.inter.SVID(t, id, testca.Validity(notBefore, notAfter), testca.KeyUsage(x509.KeyUsageDigitalSignature))
	return &cache.X509SVID{Chain: s.Certificates, PrivateKey: s.PrivateKey}
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
