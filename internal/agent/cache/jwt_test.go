package cache_test

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// jwtEnv is a persisted cache holding our bundle (with a JWT key) and
// entries, on a fake clock, with a JWT key to sign its tokens.
type jwtEnv struct {
	dir string
	clk *clock.Fake
	key *testca.JWTKey
	ca  *ca
	c   *cache.Cache
	cfg cache.Config
}

func newJWTEnv(t *testing.T, cfg cache.Config, paths ...string) *jwtEnv {
	t.Helper()
	e := &jwtEnv{
		dir: filepath.Join(t.TempDir(), "data"),
		clk: clock.NewFake(time.Now().Truncate(time.Second)),
		key: testca.NewJWTKey(t, "jwt-key-1"),
		ca:  newCA(t, td),
	}
	cfg.Dir, cfg.TrustDomain, cfg.Clock = e.dir, td, e.clk
	e.cfg = cfg
	e.c = cache.New(cfg)
	b := e.ca.bundle(td)
	e.key.AddTo(t, b)
	if err := e.c.SetBundle(b); err != nil {
		t.Fatal(err)
	}
	var entries []*cache.Entry
	for i, p := range paths {
		entries = append(entries, ent(string(rune('a'+i)), p, e.clk.Now(), uid0))
	}
	if err := e.c.SetEntries(entries); err != nil {
		t.Fatal(err)
	}
	return e
}

// set signs a token for path and audience, issued now and valid for ttl,
// and caches it.
func (e *jwtEnv) set(t *testing.T, path string, audience []string, ttl time.Duration) cache.JWTSVID {
	t.Helper()
	return e.setSigned(t, e.key, path, path, audience, ttl)
}

// setSigned signs with key a token whose subject is subject and files it
// under path.
func (e *jwtEnv) setSigned(t *testing.T, key *testca.JWTKey, path, subject string, audience []string, ttl time.Duration) cache.JWTSVID {
	t.Helper()
	now := e.clk.Now()
	tok, err := key.SignJWTSVIDAt(id(subject), audience, now, ttl)
	if err != nil {
		t.Fatal(err)
	}
	j := cache.JWTSVID{Token: tok, IssuedAt: now, ExpiresAt: now.Add(ttl)}
	e.c.SetJWTSVID(id(path), audience, j)
	return j
}

// restart loads the persisted state into a new cache on the same clock.
func (e *jwtEnv) restart(t *testing.T) *cache.Cache {
	t.Helper()
	c := cache.New(e.cfg)
	if err := c.Load(); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestJWTSVIDsPersisted: JWT-SVIDs are written to their own 0600 file in
// the data dir and, after a restart, served again for the same SPIFFE ID
// and audience set (in any order): at once while fresh, and offline.
func TestJWTSVIDsPersisted(t *testing.T) {
	e := newJWTEnv(t, cache.Config{}, "/one", "/two")
	a := e.set(t, "/one", []string{"b", "a"}, 5*time.Minute)
	b := e.set(t, "/two", []string{"a"}, 5*time.Minute)

	path := filepath.Join(e.dir, cache.JWTFileName)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("JWT-SVIDs not persisted: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s has mode %v, want 0600", path, fi.Mode().Perm())
	}
	if e.c.JWTPath() != path {
		t.Fatalf("JWTPath() = %q, want %q", e.c.JWTPath(), path)
	}

	c := e.restart(t)
	if j, ok := c.GetJWTSVID(id("/one"), []string{"a", "b", "a"}); !ok || j.Token != a.Token {
		t.Fatal("persisted fresh JWT-SVID not served after a restart")
	}
	e.clk.Add(3 * time.Minute) // past half-life: online it would be minted again
	if _, ok := c.GetJWTSVID(id("/one"), []string{"a", "b"}); ok {
		t.Fatal("JWT-SVID served online past half-life")
	}
	j, err := c.OfflineJWTSVID(id("/two"), []string{"a"})
	if err != nil || j.Token != b.Token {
		t.Fatalf("offline JWT-SVID after restart: %v", err)
	}
	if n, until := c.JWTSVIDStats(e.clk.Now()); n != 2 || !until.Equal(a.ExpiresAt.Add(-cache.JWTOfflineMargin)) {
		t.Fatalf("JWTSVIDStats = %d, %s; want 2, %s", n, until, a.ExpiresAt.Add(-cache.JWTOfflineMargin))
	}
}

// TestOfflineJWTSVIDLifetime: offline, a cached token is served past its
// half-life until min(JWTOfflineMargin, a quarter of its lifetime) before
// exp, never after; a set never fetched gets a precise error.
func TestOfflineJWTSVIDLifetime(t *testing.T) {
	e := newJWTEnv(t, cache.Config{}, "/one")
	long := e.set(t, "/one", []string{"long"}, 5*time.Minute)
	short := e.set(t, "/one", []string{"short"}, 20*time.Second)

	if _, err := e.c.OfflineJWTSVID(id("/one"), []string{"long"}); err != nil {
		t.Fatal(err)
	}
	// The short token: served until 5 s (a quarter) before exp.
	e.clk.Add(15*time.Second - time.Millisecond)
	if j, err := e.c.OfflineJWTSVID(id("/one"), []string{"short"}); err != nil || j.Token != short.Token {
		t.Fatalf("short token 5 s before its margin: %v", err)
	}
	e.clk.Add(time.Millisecond)
	_, err := e.c.OfflineJWTSVID(id("/one"), []string{"short"})
	var ne *cache.NoJWTSVIDError
	if !errors.As(err, &ne) || ne.Cached.Token != short.Token || !strings.Contains(err.Error(), "too soon to serve") {
		t.Fatalf("short token within its margin: %v", err)
	}

	// The long one: served until 30 s before exp.
	e.clk.Set(long.ExpiresAt.Add(-cache.JWTOfflineMargin - time.Millisecond))
	if _, err := e.c.OfflineJWTSVID(id("/one"), []string{"long"}); err != nil {
		t.Fatalf("long token just before its margin: %v", err)
	}
	e.clk.Add(time.Millisecond)
	if _, err := e.c.OfflineJWTSVID(id("/one"), []string{"long"}); err == nil {
		t.Fatal("long token served within 30 s of exp")
	}
	e.clk.Set(long.ExpiresAt)
	if _, err := e.c.OfflineJWTSVID(id("/one"), []string{"long"}); err == nil || !strings.Contains(err.Error(), "expired at") {
		t.Fatalf("token at exp: %v", err)
	}

	_, err = e.c.OfflineJWTSVID(id("/one"), []string{"never-fetched", "other"})
	if want := `no cached JWT-SVID for audience "never-fetched", "other" of spiffe://example.org/one`; err == nil || err.Error() != want {
		t.Fatalf("new audience: %v, want %q", err, want)
	}
	// A long audience list from a workload is clipped in the message.
	_, err = e.c.OfflineJWTSVID(id("/one"), []string{strings.Repeat("x", 500), "y", "z"})
	if err == nil || len(err.Error()) > 200 || !strings.Contains(err.Error(), "and 1 more") {
		t.Fatalf("long audience: %v", err)
	}
}

// TestPersistedJWTSVIDsRevalidated: on load a persisted token is served
// only if it verifies against the persisted bundle's JWT keys, is for the
// SPIFFE ID and audience it is filed under, belongs to an entry the agent
// still has and has not expired.
func TestPersistedJWTSVIDsRevalidated(t *testing.T) {
	e := newJWTEnv(t, cache.Config{}, "/one", "/two", "/gone")
	good := e.set(t, "/one", []string{"ok"}, time.Hour)
	e.setSigned(t, testca.NewJWTKey(t, "jwt-key-1"), "/one", "/one", []string{"forged"}, time.Hour) // same kid, other key
	e.setSigned(t, testca.NewJWTKey(t, "unknown-kid"), "/one", "/one", []string{"unknown-key"}, time.Hour)
	e.setSigned(t, e.key, "/one", "/two", []string{"other-subject"}, time.Hour)
	e.set(t, "/one", []string{"soon-expired"}, time.Minute)
	e.set(t, "/gone", []string{"ok"}, time.Hour)
	// A token filed under another audience set than its own.
	tok, err := e.key.SignJWTSVIDAt(id("/two"), []string{"real"}, e.clk.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	e.c.SetJWTSVID(id("/two"), []string{"claimed"}, cache.JWTSVID{Token: tok, IssuedAt: e.clk.Now(), ExpiresAt: e.clk.Now().Add(time.Hour)})
	if n, _ := e.c.JWTSVIDStats(e.clk.Now()); n != 7 {
		t.Fatalf("%d JWT-SVIDs cached before the restart, want 7", n)
	}

	// While the agent is down, /gone's entry leaves the persisted cache
	// (the JWT-SVID file still holds its token) and a minute passes.
	removeEntryFromFile(t, filepath.Join(e.dir, cache.FileName), id("/gone"))
	e.clk.Add(time.Minute)

	c := e.restart(t)
	if n, _ := c.JWTSVIDStats(e.clk.Now()); n != 1 {
		t.Fatalf("%d JWT-SVIDs restored, want only the valid one", n)
	}
	if j, err := c.OfflineJWTSVID(id("/one"), []string{"ok"}); err != nil || j.Token != good.Token {
		t.Fatalf("valid token not restored: %v", err)
	}
	for _, tc := range []struct {
		path string
		aud  string
	}{{"/one", "forged"}, {"/one", "unknown-key"}, {"/one", "other-subject"}, {"/one", "soon-expired"}, {"/gone", "ok"}, {"/two", "claimed"}, {"/two", "real"}} {
		if _, err := c.OfflineJWTSVID(id(tc.path), []string{tc.aud}); err == nil {
			t.Errorf("%s %q: restored, want dropped", tc.path, tc.aud)
		}
	}

	// A bundle that no longer holds the signing key: nothing verifies.
	b := e.ca.bundle(td)
	if err := c.SetBundle(b); err != nil {
		t.Fatal(err)
	}
	if n, _ := e.restart(t).JWTSVIDStats(e.clk.Now()); n != 0 {
		t.Fatalf("%d JWT-SVIDs restored without their key in the bundle", n)
	}
}

// TestJWTSVIDBounds: the cache holds at most MaxJWTSVIDsPerID tokens per
// SPIFFE ID and MaxJWTSVIDs in all, evicting the token expiring first of
// the SPIFFE ID holding the most; the persisted file and a load obey the
// same bounds.
func TestJWTSVIDBounds(t *testing.T) {
	e := newJWTEnv(t, cache.Config{MaxJWTSVIDs: 4, MaxJWTSVIDsPerID: 3}, "/one", "/two")
	// /one: 3 tokens, the first expiring first.
	e.set(t, "/one", []string{"1"}, 10*time.Minute)
	e.set(t, "/one", []string{"2"}, 20*time.Minute)
	e.set(t, "/one", []string{"3"}, 30*time.Minute)
	e.set(t, "/one", []string{"4"}, 40*time.Minute) // per-ID bound: "1" goes
	has := func(c *cache.Cache, path, aud string) bool {
		_, err := c.OfflineJWTSVID(id(path), []string{aud})
		return err == nil
	}
	if has(e.c, "/one", "1") || !has(e.c, "/one", "2") || !has(e.c, "/one", "4") {
		t.Fatal("per-ID bound: the token expiring first must be evicted")
	}
	// /two: the cache is full (4): /one, holding the most, makes room.
	e.set(t, "/two", []string{"a"}, 50*time.Minute)
	e.set(t, "/two", []string{"b"}, 50*time.Minute)
	if has(e.c, "/one", "2") || !has(e.c, "/one", "3") || !has(e.c, "/two", "a") || !has(e.c, "/two", "b") {
		t.Fatal("total bound: /one's token expiring first must make room")
	}
	if n, _ := e.c.JWTSVIDStats(e.clk.Now()); n != 4 {
		t.Fatalf("%d cached, want 4", n)
	}
	var st struct {
		SVIDs []json.RawMessage `json:"jwt_svids"`
	}
	data, err := os.ReadFile(e.c.JWTPath())
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &st); err != nil || len(st.SVIDs) != 4 {
		t.Fatalf("persisted %d JWT-SVIDs (%v), want 4", len(st.SVIDs), err)
	}
	// Expired tokens make room before any valid one.
	e.clk.Add(45 * time.Minute) // /one's 3 and 4 have expired
	e.set(t, "/two", []string{"c"}, time.Hour)
	if !has(e.c, "/two", "a") || !has(e.c, "/two", "b") || !has(e.c, "/two", "c") {
		t.Fatal("a valid token was evicted while expired ones were held")
	}

	// A load with smaller bounds keeps within them.
	e.cfg.MaxJWTSVIDs, e.cfg.MaxJWTSVIDsPerID = 2, 1
	if n, _ := e.restart(t).JWTSVIDStats(e.clk.Now()); n != 1 {
		t.Fatalf("%d loaded with a bound of 1 per ID (all /two), want 1", n)
	}
}

// TestJWTSVIDAudienceKey: audience sets are told apart exactly (no
// separator an audience could contain makes two sets collide).
func TestJWTSVIDAudienceKey(t *testing.T) {
	e := newJWTEnv(t, cache.Config{}, "/one")
	ab := e.set(t, "/one", []string{"a", "b"}, time.Hour)
	if j, ok := e.c.GetJWTSVID(id("/one"), []string{"a\x00b"}); ok {
		t.Fatalf("audience [\"a\\x00b\"] served the token of [a b] (%v)", j.Token == ab.Token)
	}
	if _, ok := e.c.GetJWTSVID(id("/one"), []string{"b", "a", "b"}); !ok {
		t.Fatal("the same set in another order missed")
	}
}

// TestJWTSVIDsDroppedWithTheirEntryAndOnRevoke: a removed entry's tokens
// leave the file; Revoke deletes it.
func TestJWTSVIDsDroppedWithTheirEntryAndOnRevoke(t *testing.T) {
	e := newJWTEnv(t, cache.Config{}, "/one", "/two")
	e.set(t, "/one", []string{"a"}, time.Hour)
	e.set(t, "/two", []string{"a"}, time.Hour)
	var keep []*cache.Entry
	for _, en := range e.c.Entries() {
		if en.SPIFFEID == id("/two") {
			keep = append(keep, en)
		}
	}
	if err := e.c.SetEntries(keep); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(e.c.JWTPath())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), id("/one").String()) || !strings.Contains(string(data), id("/two").String()) {
		t.Fatalf("persisted JWT-SVIDs after /one's entry was removed: %s", data)
	}
	if err := e.c.Revoke(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(e.c.JWTPath()); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("JWT-SVID file after Revoke: %v", err)
	}
	// A token set while revoked is neither kept nor written.
	e.set(t, "/two", []string{"late"}, time.Hour)
	if _, err := os.Stat(e.c.JWTPath()); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("JWT-SVID file written while revoked: %v", err)
	}
}

// TestJWTSVIDFileIgnoredWhenUnusable: a JWT-SVID file that does not parse,
// has another version or trust domain is ignored; the rest of the cache
// loads.
func TestJWTSVIDFileIgnoredWhenUnusable(t *testing.T) {
	e := newJWTEnv(t, cache.Config{}, "/one")
	e.set(t, "/one", []string{"a"}, time.Hour)
	data, err := os.ReadFile(e.c.JWTPath())
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{
		"not json":     "{",
		"version":      strings.Replace(string(data), `"version":1`, `"version":2`, 1),
		"trust domain": strings.Replace(string(data), `"trust_domain":"example.org"`, `"trust_domain":"other.org"`, 1),
	} {
		if err := os.WriteFile(e.c.JWTPath(), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		c := e.restart(t)
		if n, _ := c.JWTSVIDStats(e.clk.Now()); n != 0 || len(c.Entries()) != 1 {
			t.Errorf("%s: %d JWT-SVIDs, %d entries; want 0 and 1", name, n, len(c.Entries()))
		}
	}
}

// removeEntryFromFile edits a persisted cache file, dropping the entries
// of a SPIFFE ID and nothing else.
func removeEntryFromFile(t *testing.T, path string, sid spiffeid.ID) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]json.RawMessage
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	var entries []map[string]any
	if err := json.Unmarshal(st["entries"], &entries); err != nil {
		t.Fatal(err)
	}
	var keep []map[string]any
	for _, e := range entries {
		if e["spiffe_id"] != sid.String() {
			keep = append(keep, e)
		}
	}
	if len(keep) == len(entries) {
		t.Fatalf("no entry of %s in %s", sid, path)
	}
	if st["entries"], err = json.Marshal(keep); err != nil {
		t.Fatal(err)
	}
	if data, err = json.Marshal(st); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
