package cache

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// The persisted-cache fuzz target runs at a fixed instant, so that the
// SVIDs of its seed files (valid until 2100, or expired in 2026) are judged
// the same on every run.
var (
	fuzzNow = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	fuzzTD  = spiffeid.RequireTrustDomainFromString("example.org")
	fuzzFed = spiffeid.RequireTrustDomainFromString("partner.test")
)

// fuzzCA issues the seed files' certificates.
type fuzzCA struct{ *testca.CA }

func newFuzzCA(tb testing.TB, td spiffeid.TrustDomain) *fuzzCA {
	return &fuzzCA{testca.New(tb, testca.TrustDomain(td), testca.Subject("fuzz CA"), testca.Serial(1),
		testca.Validity(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)),
		testca.KeyUsage(x509.KeyUsageCertSign))}
}

func (ca *fuzzCA) svid(tb testing.TB, id spiffeid.ID, key crypto.Signer, notAfter time.Time) *X509SVID {
	s := ca.SVID(tb, id, testca.Key(key), testca.Validity(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), notAfter),
		testca.KeyUsage(x509.KeyUsageDigitalSignature), testca.ExtKeyUsage())
	return &X509SVID{Chain: append(s.Certificates, ca.Cert), PrivateKey: key}
}

// fuzzCacheFile returns a file written by the cache itself: two bundles,
// three entries, an SVID with an EC key, one with an Ed25519 key and an
// expired one.
func fuzzCacheFile(tb testing.TB) []byte {
	dir := tb.TempDir()
	c := New(Config{Dir: dir, TrustDomain: fuzzTD, Clock: clock.NewFake(fuzzNow)})
	ca := newFuzzCA(tb, fuzzTD)
	uid := selector.Selector{Type: "unix", Value: "uid:1000"}
	gid := selector.Selector{Type: "unix", Value: "gid:1000"}
	e1 := &Entry{ID: "e1", SPIFFEID: spiffeid.RequireFromPath(fuzzTD, "/web"), ParentID: spiffeid.RequireFromPath(fuzzTD, "/agent"),
		Selectors: []selector.Selector{uid, gid}, DNSNames: []string{"web.example.org"}, FederatesWith: []spiffeid.TrustDomain{fuzzFed},
		Hint: "internal", RevisionNumber: 3, X509SVIDTTL: time.Hour, CreatedAt: time.Unix(1700000000, 0).UTC()}
	e2 := &Entry{ID: "e2", SPIFFEID: spiffeid.RequireFromPath(fuzzTD, "/db"), Selectors: []selector.Selector{uid}, RevisionNumber: 1}
	e3 := &Entry{ID: "e3", SPIFFEID: spiffeid.RequireFromPath(fuzzTD, "/old"), Selectors: []selector.Selector{gid}}
	for _, b := range []*spiffebundle.Bundle{
		spiffebundle.FromX509Authorities(fuzzTD, []*x509.Certificate{ca.Cert}),
		spiffebundle.FromX509Authorities(fuzzFed, []*x509.Certificate{newFuzzCA(tb, fuzzFed).Cert}),
	} {
		if err := c.SetBundle(b); err != nil {
			tb.Fatal(err)
		}
	}
	if err := c.SetEntries([]*Entry{e1, e2, e3}); err != nil {
		tb.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	longAgo, far := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := c.SetX509SVIDs(map[string]*X509SVID{
		"e1": ca.svid(tb, e1.SPIFFEID, ecKey, far),
		"e2": ca.svid(tb, e2.SPIFFEID, edKey, far),
		"e3": ca.svid(tb, e3.SPIFFEID, ecKey, longAgo),
	}); err != nil {
		tb.Fatal(err)
	}
	data, err := os.ReadFile(c.Path())
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

// FuzzLoad writes arbitrary content as the persisted cache and loads it, as
// the agent does at start-up. Load never panics; when it fails it names the
// file, stays short and leaves the cache empty (the agent then starts with
// nothing and the server resends everything); when it succeeds, every entry
// validates, every SVID is unexpired, for its entry's SPIFFE ID and matches
// its key, and the state survives another persist and load unchanged.
func FuzzLoad(f *testing.F) {
	valid := fuzzCacheFile(f)
	f.Add(valid)
	f.Add([]byte(strings.Replace(string(valid), `"version":1`, `"version":2`, 1)))
	f.Add([]byte(strings.Replace(string(valid), `"trust_domain":"example.org"`, `"trust_domain":"partner.test"`, 1)))
	f.Add([]byte(strings.Replace(string(valid), `"spiffe_id":"spiffe://example.org/web"`, `"spiffe_id":"spiffe://example.org/db"`, 1)))
	f.Add([]byte(`{"version":1,"trust_domain":"example.org","entries":[null]}`))
	f.Add([]byte(`{"version":1,"trust_domain":"example.org","entries":[{"id":"a","spiffe_id":"spiffe://example.org/a","selectors":[{"Type":"unix","Value":"uid:0"}]}],"svids":{"a":{"chain":[""],"key":""}}}`))
	f.Add([]byte(`{"version":1,"trust_domain":"example.org","bundles":{"Bad":{}}}`))
	f.Add([]byte(`{"version":1,"trust_domain":"example.org","bundles":{"example.org":{"keys":[{"kty":"EC"}]}}}`))
	f.Add([]byte(`{"version":1,"trust_domain":"example.org","entries":[{"id":"` + strings.Repeat("i", 4096) + `","spiffe_id":"spiffe://example.org/a"}]}`))
	f.Add([]byte(`{"version":1,"trust_domain":"` + strings.Repeat("a", 4096) + `"}`))
	f.Add([]byte(`{not json`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, FileName), data, 0o600); err != nil {
			t.Fatal(err)
		}
		c := New(Config{Dir: dir, TrustDomain: fuzzTD, Clock: clock.NewFake(fuzzNow)})
		if err := c.Load(); err != nil {
			if !strings.Contains(err.Error(), c.Path()) {
				t.Fatalf("error does not name the file: %v", err)
			}
			if n := len(err.Error()) - len(c.Path()); n > 1024 {
				t.Fatalf("error of %d bytes: %.300s...", n, err)
			}
			if len(c.entries) != 0 || len(c.svids) != 0 || len(c.bundles) != 0 {
				t.Fatalf("a failed Load applied %d entries, %d SVIDs, %d bundles", len(c.entries), len(c.svids), len(c.bundles))
			}
			return
		}
		checkLoaded(t, c)

		// Persisting what was loaded and loading it again changes nothing.
		if err := c.persist(); err != nil {
			t.Fatalf("persist a loaded cache: %v", err)
		}
		again := New(Config{Dir: dir, TrustDomain: fuzzTD, Clock: clock.NewFake(fuzzNow)})
		if err := again.Load(); err != nil {
			t.Fatalf("load what a loaded cache persisted: %v", err)
		}
		sameState(t, c, again)
	})
}

func checkLoaded(t *testing.T, c *Cache) {
	t.Helper()
	for id, r := range c.entries {
		if err := r.entry.validate(); err != nil || r.entry.ID != id {
			t.Fatalf("loaded entry %q (%+v) does not validate: %v", id, r.entry, err)
		}
	}
	for id, s := range c.svids {
		r, ok := c.entries[id]
		if !ok {
			t.Fatalf("SVID for absent entry %q loaded", id)
		}
		if len(s.chain) == 0 || !fuzzNow.Before(s.notAfter()) {
			t.Fatalf("expired or empty SVID for entry %q loaded", id)
		}
		if err := checkSVID(r.entry, &X509SVID{Chain: s.chain, PrivateKey: s.key}); err != nil {
			t.Fatalf("loaded SVID for entry %q does not validate: %v", id, err)
		}
		if got, ok := c.X509SVID(id); !ok || !publicKeysEqual(got.PrivateKey.Public(), s.key.Public()) {
			t.Fatalf("loaded SVID for entry %q is not served", id)
		}
	}
	for td, r := range c.bundles {
		if r.bundle.TrustDomain() != td {
			t.Fatalf("bundle of %q filed under %q", r.bundle.TrustDomain(), td)
		}
	}
}

func sameState(t *testing.T, a, b *Cache) {
	t.Helper()
	if len(a.entries) != len(b.entries) || len(a.svids) != len(b.svids) || len(a.bundles) != len(b.bundles) {
		t.Fatalf("reloaded %d/%d/%d entries/SVIDs/bundles, had %d/%d/%d",
			len(b.entries), len(b.svids), len(b.bundles), len(a.entries), len(a.svids), len(a.bundles))
	}
	for id, r := range a.entries {
		rb, ok := b.entries[id]
		if !ok {
			t.Fatalf("entry %q lost on reload", id)
		}
		if !entriesEqual(r.entry, rb.entry) {
			ja, _ := json.Marshal(r.entry)
			jb, _ := json.Marshal(rb.entry)
			t.Fatalf("entry %q changed on reload:\n%s\n%s", id, ja, jb)
		}
	}
	for id, s := range a.svids {
		sb, ok := b.svids[id]
		if !ok || len(sb.chain) != len(s.chain) || sb.revision != s.revision || !publicKeysEqual(sb.key.Public(), s.key.Public()) {
			t.Fatalf("SVID of %q changed on reload", id)
		}
		for i := range s.chain {
			if !s.chain[i].Equal(sb.chain[i]) {
				t.Fatalf("SVID of %q: certificate %d changed on reload", id, i)
			}
		}
	}
	for td, r := range a.bundles {
		if rb, ok := b.bundles[td]; !ok || !r.bundle.Equal(rb.bundle) {
			t.Fatalf("bundle of %q changed on reload", td)
		}
	}
}

// TestEmptyBundleKeepsCacheLoadable: a bundle without authorities (a
// server may send one) was persisted without "keys", which spiffebundle
// refuses to parse, so the whole file failed to load after a restart and
// every entry and SVID was lost (found by FuzzLoad). It is now left out of
// the file and the rest restores.
func TestEmptyBundleKeepsCacheLoadable(t *testing.T) {
	dir := t.TempDir()
	clk := clock.NewFake(fuzzNow)
	c := New(Config{Dir: dir, TrustDomain: fuzzTD, Clock: clk})
	ca := newFuzzCA(t, fuzzTD)
	if err := c.SetBundle(spiffebundle.FromX509Authorities(fuzzTD, []*x509.Certificate{ca.Cert})); err != nil {
		t.Fatal(err)
	}
	if err := c.SetBundle(spiffebundle.New(fuzzFed)); err != nil {
		t.Fatal(err)
	}
	e := &Entry{ID: "e1", SPIFFEID: spiffeid.RequireFromPath(fuzzTD, "/web"), Selectors: []selector.Selector{{Type: "unix", Value: "uid:0"}}}
	if err := c.SetEntries([]*Entry{e}); err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetX509SVIDs(map[string]*X509SVID{"e1": ca.svid(t, e.SPIFFEID, key, time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC))}); err != nil {
		t.Fatal(err)
	}
	restarted := New(Config{Dir: dir, TrustDomain: fuzzTD, Clock: clk})
	if err := restarted.Load(); err != nil {
		t.Fatalf("load after a restart: %v", err)
	}
	if _, ok := restarted.X509SVID("e1"); !ok || len(restarted.Entries()) != 1 {
		t.Fatal("entry and SVID not restored")
	}
	if _, ok := restarted.Bundle(fuzzTD); !ok {
		t.Fatal("own bundle not restored")
	}
	if _, ok := restarted.Bundle(fuzzFed); ok {
		t.Fatal("the empty bundle was restored")
	}
}
