package cache

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// fuzzJWTDir writes a persisted cache (a bundle with a JWT key, two
// entries) and JWT-SVIDs into a new directory and returns it with the
// JWT-SVID file's content: one valid token per entry, one expired at
// fuzzNow, and one of a SPIFFE ID no entry has.
func fuzzJWTDir(tb testing.TB) (dir string, jwtFile []byte) {
	dir = tb.TempDir()
	clk := clock.NewFake(fuzzNow.Add(-time.Hour))
	// Built in memory and written once at the end: every write syncs,
	// and fuzz workers run this at each start.
	c := New(Config{TrustDomain: fuzzTD, Clock: clk})
	ca := newFuzzCA(tb, fuzzTD)
	key := testca.NewJWTKey(tb, "fuzz-jwt")
	b := spiffebundle.FromX509Authorities(fuzzTD, ca.Roots())
	key.AddTo(tb, b)
	if err := c.SetBundle(b); err != nil {
		tb.Fatal(err)
	}
	uid := selector.Selector{Type: "unix", Value: "uid:1000"}
	web, db := spiffeid.RequireFromPath(fuzzTD, "/web"), spiffeid.RequireFromPath(fuzzTD, "/db")
	if err := c.SetEntries([]*Entry{{ID: "e1", SPIFFEID: web, Selectors: []selector.Selector{uid}}, {ID: "e2", SPIFFEID: db, Selectors: []selector.Selector{uid}}}); err != nil {
		tb.Fatal(err)
	}
	set := func(id spiffeid.ID, aud []string, ttl time.Duration) {
		tok, err := key.SignJWTSVIDAt(id, aud, clk.Now(), ttl)
		if err != nil {
			tb.Fatal(err)
		}
		c.SetJWTSVID(id, aud, JWTSVID{Token: tok, IssuedAt: clk.Now(), ExpiresAt: clk.Now().Add(ttl)})
	}
	set(web, []string{"a", "b"}, 3*time.Hour)
	set(db, []string{"a"}, 3*time.Hour)
	set(db, []string{"short"}, time.Hour)
	set(spiffeid.RequireFromPath(fuzzTD, "/no-entry"), []string{"a"}, 3*time.Hour)
	c.cfg.Dir = dir
	if err := c.persist(); err != nil {
		tb.Fatal(err)
	}
	if err := c.persistJWTs(); err != nil {
		tb.Fatal(err)
	}
	data, err := os.ReadFile(c.JWTPath())
	if err != nil {
		tb.Fatal(err)
	}
	return dir, data
}

// FuzzLoadJWTSVIDs writes arbitrary content as the persisted JWT-SVIDs
// beside a valid persisted cache and loads both, as the agent does at
// start-up. The JWT-SVID file never makes Load fail or panic; every token
// restored verifies against the persisted bundle at the cache's clock, is
// for an entry's SPIFFE ID and the audience set it is filed under, and the
// bounds hold.
func FuzzLoadJWTSVIDs(f *testing.F) {
	dir, valid := fuzzJWTDir(f)
	cacheFile, err := os.ReadFile(dir + "/" + FileName)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add([]byte(strings.Replace(string(valid), `"version":1`, `"version":2`, 1)))
	f.Add([]byte(strings.Replace(string(valid), `"spiffe_id":"spiffe://example.org/web"`, `"spiffe_id":"spiffe://example.org/db"`, 1)))
	f.Add([]byte(strings.Replace(string(valid), `"audience":["a","b"]`, `"audience":["a"]`, 1)))
	f.Add([]byte(`{"version":1,"trust_domain":"example.org","jwt_svids":[{"spiffe_id":"spiffe://example.org/web","audience":["a"],"token":"a.b.c"}]}`))
	f.Add([]byte(`{"version":1,"trust_domain":"example.org","jwt_svids":[null]}`))
	f.Add([]byte(`{not json`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		d := t.TempDir()
		if err := os.WriteFile(d+"/"+FileName, cacheFile, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(d+"/"+JWTFileName, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c := New(Config{Dir: d, TrustDomain: fuzzTD, Clock: clock.NewFake(fuzzNow), MaxJWTSVIDs: 3, MaxJWTSVIDsPerID: 2})
		if err := c.Load(); err != nil {
			t.Fatalf("the JWT-SVID file made Load fail: %v", err)
		}
		own, _ := c.Bundle(fuzzTD)
		ids := map[spiffeid.ID]struct{}{}
		for _, e := range c.Entries() {
			ids[e.SPIFFEID] = struct{}{}
		}
		perID := map[spiffeid.ID]int{}
		for k, r := range c.jwts {
			d := jwtDiskSVID{SPIFFEID: k.id.String(), Audience: r.audience, Token: r.svid.Token}
			id, rec, err := verifyPersistedJWT(d, own, ids, fuzzNow)
			if err != nil || id != k.id || rec.svid.Token != r.svid.Token || !rec.svid.ExpiresAt.Equal(r.svid.ExpiresAt) || makeJWTKey(id, rec.audience) != k {
				t.Fatalf("restored JWT-SVID of %s %q does not verify: %v", k.id, r.audience, err)
			}
			perID[k.id]++
			if perID[k.id] > 2 {
				t.Fatalf("%d JWT-SVIDs of %s restored, bound 2", perID[k.id], k.id)
			}
		}
		if len(c.jwts) > 3 {
			t.Fatalf("%d JWT-SVIDs restored, bound 3", len(c.jwts))
		}
	})
}

// TestFuzzJWTSeedRestores: the valid seed restores exactly its two valid
// tokens (a check that FuzzLoadJWTSVIDs's seed exercises the restore
// path, not only refusals).
func TestFuzzJWTSeedRestores(t *testing.T) {
	dir, _ := fuzzJWTDir(t)
	c := New(Config{Dir: dir, TrustDomain: fuzzTD, Clock: clock.NewFake(fuzzNow)})
	if err := c.Load(); err != nil {
		t.Fatal(err)
	}
	if len(c.jwts) != 2 {
		t.Fatalf("%d JWT-SVIDs restored, want 2", len(c.jwts))
	}
}
