package workloadapi

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"runtime"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

func testCert(t *testing.T, serial int64) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	ca := testca.New(t, testca.Serial(serial), testca.Validity(time.Now(), time.Now().Add(time.Hour)))
	return ca.Cert, ca.Key.(*ecdsa.PrivateKey)
}

func testIdentity(t *testing.T, serial int64, intermediates ...*x509.Certificate) cache.Identity {
	t.Helper()
	leaf, key := testCert(t, serial)
	return cache.Identity{
		Entry:      &cache.Entry{ID: "e"},
		SVID:       append([]*x509.Certificate{leaf}, intermediates...),
		PrivateKey: key,
	}
}

func checkSVIDDER(t *testing.T, id cache.Identity, chain, key []byte) {
	t.Helper()
	want := concatDER(id.SVID)
	if !bytes.Equal(chain, want) {
		t.Fatal("chain encoding differs from the SVID's certificates")
	}
	parsed, err := x509.ParsePKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if !id.PrivateKey.(*ecdsa.PrivateKey).Equal(parsed) {
		t.Fatal("key encoding is not the SVID's key")
	}
}

func TestDERCacheSVID(t *testing.T) {
	c := newDERCache()
	inter, _ := testCert(t, 100)
	id := testIdentity(t, 1, inter)
	chain1, key1, err := c.svid(id)
	if err != nil {
		t.Fatal(err)
	}
	checkSVIDDER(t, id, chain1, key1)
	chain2, key2, err := c.svid(id)
	if err != nil {
		t.Fatal(err)
	}
	if &chain2[0] != &chain1[0] || &key2[0] != &key1[0] {
		t.Fatal("second call re-encoded the same SVID")
	}

	// A renewed SVID (new leaf and key) gets its own encoding.
	renewed := testIdentity(t, 2, inter)
	chain3, key3, err := c.svid(renewed)
	if err != nil {
		t.Fatal(err)
	}
	checkSVIDDER(t, renewed, chain3, key3)
	if bytes.Equal(key3, key1) {
		t.Fatal("renewed SVID served the old key")
	}

	// Same leaf, other intermediates: re-encoded, not served stale.
	other, _ := testCert(t, 101)
	moved := cache.Identity{Entry: id.Entry, SVID: []*x509.Certificate{id.SVID[0], other}, PrivateKey: id.PrivateKey}
	chain4, key4, err := c.svid(moved)
	if err != nil {
		t.Fatal(err)
	}
	checkSVIDDER(t, moved, chain4, key4)

	if _, _, err := c.svid(cache.Identity{Entry: id.Entry}); err == nil {
		t.Fatal("empty chain accepted")
	}
}

// TestDERCacheForgetsCollectedSVIDs: once an SVID's leaf is garbage, its
// cached key encoding is dropped.
func TestDERCacheForgetsCollectedSVIDs(t *testing.T) {
	c := newDERCache()
	func() {
		for i := range 3 {
			if _, _, err := c.svid(testIdentity(t, int64(i+1))); err != nil {
				t.Fatal(err)
			}
		}
	}()
	if n := c.len(); n != 3 {
		t.Fatalf("%d cached SVIDs, want 3", n)
	}
	for i := 0; i < 100 && c.len() > 0; i++ {
		runtime.GC()
		time.Sleep(10 * time.Millisecond) // cleanups run on their own goroutine
	}
	if n := c.len(); n != 0 {
		t.Fatalf("%d cached SVIDs after their leaves became garbage, want 0", n)
	}
}

func TestDERCacheBundle(t *testing.T) {
	c := newDERCache()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	a, _ := testCert(t, 1)
	b, _ := testCert(t, 2)
	d1 := c.bundle(td, []*x509.Certificate{a})
	d2 := c.bundle(td, []*x509.Certificate{a})
	if !bytes.Equal(d1, a.Raw) || &d1[0] != &d2[0] {
		t.Fatal("same authorities not served from the cache")
	}
	d3 := c.bundle(td, []*x509.Certificate{a, b})
	if !bytes.Equal(d3, append(append([]byte{}, a.Raw...), b.Raw...)) {
		t.Fatal("changed authorities served stale")
	}
	other := spiffeid.RequireTrustDomainFromString("other.org")
	if d := c.bundle(other, []*x509.Certificate{b}); !bytes.Equal(d, b.Raw) {
		t.Fatal("trust domains mixed up")
	}
	if d := c.bundle(td, nil); len(d) != 0 {
		t.Fatal("empty bundle not empty")
	}
}
