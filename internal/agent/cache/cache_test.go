package cache_test

import (
	"crypto/ecdsa"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

var (
	td    = spiffeid.RequireTrustDomainFromString("example.org")
	fedTD = spiffeid.RequireTrustDomainFromString("partner.test")
	uid0  = selector.Selector{Type: "unix", Value: "uid:0"}
	uid1  = selector.Selector{Type: "unix", Value: "uid:1"}
	gid0  = selector.Selector{Type: "unix", Value: "gid:0"}
)

// ca is a SPIFFE CA of one trust domain (testca) issuing the cache's types.
type ca struct{ *testca.CA }

func newCA(t *testing.T, d spiffeid.TrustDomain) *ca {
	t.Helper()
	now := time.Now()
	return &ca{testca.New(t, testca.TrustDomain(d), testca.Subject("ca"), testca.Serial(1),
		testca.Validity(now.Add(-time.Hour), now.Add(48*time.Hour)), testca.KeyUsage(x509.KeyUsageCertSign))}
}

func (c *ca) bundle(d spiffeid.TrustDomain) *spiffebundle.Bundle {
	return spiffebundle.FromX509Authorities(d, c.Roots())
}

func (c *ca) svid(t *testing.T, id spiffeid.ID, nb, na time.Time) *cache.X509SVID {
	t.Helper()
	s := c.SVID(t, id, testca.Validity(nb, na), testca.KeyUsage(x509.KeyUsageDigitalSignature), testca.ExtKeyUsage())
	return &cache.X509SVID{Chain: s.Certificates, PrivateKey: s.PrivateKey}
}

func id(path string) spiffeid.ID { return spiffeid.RequireFromPath(td, path) }

func ent(eid, path string, created time.Time, sels ...selector.Selector) *cache.Entry {
	return &cache.Entry{ID: eid, SPIFFEID: id(path), Selectors: sels, RevisionNumber: 1, CreatedAt: created}
}

func newCache(t *testing.T, dir string, clk clock.Clock) *cache.Cache {
	return cache.New(cache.Config{Dir: dir, TrustDomain: td, Clock: clk})
}

func entryIDs(es []*cache.Entry) string {
	var s []string
	for _, e := range es {
		s = append(s, e.ID)
	}
	return strings.Join(s, ",")
}

func TestMatchingEntriesOrder(t *testing.T) {
	c := newCache(t, "", nil)
	base := time.Unix(1700000000, 0)
	hinted := ent("h", "/h", base.Add(-time.Hour), uid0)
	hinted.Hint = "h"
	err := c.SetEntries([]*cache.Entry{
		ent("z-old", "/z", base, uid0),
		ent("b-new", "/b", base.Add(time.Minute), uid0, gid0),
		ent("a-same", "/a", base, uid0),
		hinted,
		ent("other", "/o", base, uid1),
		ent("needs-more", "/m", base, uid0, selector.Selector{Type: "unix", Value: "user:x"}),
	})
	if err != nil {
		t.Fatal(err)
	}
	got := entryIDs(c.MatchingEntries(selector.NewSet(uid0, gid0)))
	if got != "a-same,z-old,b-new,h" {
		t.Fatalf("order %s", got)
	}
	if got := entryIDs(c.MatchingEntries(selector.NewSet(uid0))); got != "a-same,z-old,h" {
		t.Fatalf("subset matching %s", got)
	}
	if got := c.MatchingEntries(selector.NewSet()); len(got) != 0 {
		t.Fatalf("empty selector set matched %d", len(got))
	}
}

func TestSetEntriesSkipsInvalid(t *testing.T) {
	c := newCache(t, "", nil)
	err := c.SetEntries([]*cache.Entry{
		ent("ok", "/ok", time.Time{}, uid0),
		ent("", "/noid", time.Time{}, uid0),
		ent("nosel", "/nosel", time.Time{}),
		{ID: "noid", Selectors: []selector.Selector{uid0}},
		ent("ok", "/dup", time.Time{}, uid0),
		ent("badsel", "/b", time.Time{}, selector.Selector{Type: "unix"}),
	})
	if err == nil {
		t.Fatal("invalid entries accepted silently")
	}
	if got := entryIDs(c.Entries()); got != "ok" {
		t.Fatalf("entries %s", got)
	}
}

func TestSVIDsFollowEntries(t *testing.T) {
	clk := clock.NewFake(time.Now())
	c := newCache(t, "", clk)
	a := newCA(t, td)
	now := clk.Now()
	e1, e2 := ent("1", "/one", now, uid0), ent("2", "/two", now, uid0)
	if err := c.SetEntries([]*cache.Entry{e1, e2}); err != nil {
		t.Fatal(err)
	}
	good := a.svid(t, id("/one"), now, now.Add(time.Hour))
	mismatched := a.svid(t, id("/two"), now, now.Add(time.Hour))
	mismatched.PrivateKey = good.PrivateKey
	err := c.SetX509SVIDs(map[string]*cache.X509SVID{
		"1":       good,
		"2":       a.svid(t, id("/one"), now, now.Add(time.Hour)), // wrong SPIFFE ID
		"unknown": a.svid(t, id("/one"), now, now.Add(time.Hour)),
	})
	if err == nil {
		t.Fatal("bad SVIDs accepted silently")
	}
	if err := c.SetX509SVIDs(map[string]*cache.X509SVID{"2": mismatched}); err == nil {
		t.Fatal("SVID with a foreign key accepted")
	}
	if _, ok := c.X509SVID("1"); !ok {
		t.Fatal("valid SVID not stored")
	}
	if _, ok := c.X509SVID("2"); ok {
		t.Fatal("invalid SVID stored")
	}
	if got := entryIDs(c.NeedsSVID(now, nil)); got != "2" {
		t.Fatalf("NeedsSVID %s", got)
	}

	// New revision: still served, but due for a new SVID.
	e1b := *e1
	e1b.RevisionNumber = 2
	if err := c.SetEntries([]*cache.Entry{&e1b, e2}); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.X509SVID("1"); !ok {
		t.Fatal("SVID dropped on a revision change")
	}
	if got := entryIDs(c.NeedsSVID(now, nil)); got != "1,2" {
		t.Fatalf("NeedsSVID after revision change %s", got)
	}
	// Changed SPIFFE ID: the old SVID names the wrong identity.
	e1c := e1b
	e1c.SPIFFEID = id("/renamed")
	if err := c.SetEntries([]*cache.Entry{&e1c, e2}); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.X509SVID("1"); ok {
		t.Fatal("SVID kept after the SPIFFE ID changed")
	}
	// Removed entry: SVID gone.
	if err := c.SetX509SVIDs(map[string]*cache.X509SVID{"1": a.svid(t, id("/renamed"), now, now.Add(time.Hour))}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetEntries([]*cache.Entry{e2}); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.X509SVID("1"); ok {
		t.Fatal("SVID of a removed entry kept")
	}
	if err := c.SetEntries([]*cache.Entry{&e1c, e2}); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.X509SVID("1"); ok {
		t.Fatal("SVID resurrected with its entry")
	}
}

func TestNeedsSVIDRenewalPoint(t *testing.T) {
	clk := clock.NewFake(time.Now())
	c := newCache(t, "", clk)
	a := newCA(t, td)
	now := clk.Now()
	if err := c.SetEntries([]*cache.Entry{ent("1", "/one", now, uid0)}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetX509SVIDs(map[string]*cache.X509SVID{"1": a.svid(t, id("/one"), now, now.Add(100*time.Minute))}); err != nil {
		t.Fatal(err)
	}
	if got := c.NeedsSVID(now.Add(39*time.Minute), nil); len(got) != 0 {
		t.Fatal("renewal due before 40% of the lifetime")
	}
	if got := c.NeedsSVID(now.Add(50*time.Minute), nil); len(got) != 1 {
		t.Fatal("renewal not due at half-life")
	}
	if got := c.NeedsSVID(now.Add(10*time.Minute), func(_, _, _ time.Time) bool { return true }); len(got) != 1 {
		t.Fatal("custom policy ignored")
	}
	// Expired: needed regardless of the policy.
	if got := c.NeedsSVID(now.Add(101*time.Minute), func(_, _, _ time.Time) bool { return false }); len(got) != 1 {
		t.Fatal("expired SVID not reported")
	}
}

func TestDefaultRenewalWindow(t *testing.T) {
	nb := time.Unix(1700000000, 0)
	for i := range 500 {
		life := time.Duration(i+1) * 7 * time.Minute
		start := nb.Add(time.Duration(i) * 13 * time.Second)
		na := start.Add(life)
		if cache.DefaultRenewal(start.Add(life*2/5-time.Second), start, na) {
			t.Fatalf("lifetime %v: due before 40%%", life)
		}
		if !cache.DefaultRenewal(start.Add(life/2), start, na) {
			t.Fatalf("lifetime %v: not due at 50%%", life)
		}
	}
}

func recv(t *testing.T, s *cache.Subscription) *cache.WorkloadUpdate {
	t.Helper()
	select {
	case u := <-s.Updates():
		return u
	default:
		t.Fatal("no update pending")
		return nil
	}
}

func noUpdate(t *testing.T, s *cache.Subscription) {
	t.Helper()
	select {
	case u := <-s.Updates():
		t.Fatalf("unexpected update with %d entries", len(u.Entries))
	default:
	}
}

func TestSubscriptions(t *testing.T) {
	clk := clock.NewFake(time.Now())
	c := newCache(t, "", clk)
	a, partner := newCA(t, td), newCA(t, fedTD)
	now := clk.Now()
	if err := c.SetBundle(a.bundle(td)); err != nil {
		t.Fatal(err)
	}
	sub := c.Subscribe(selector.NewSet(uid0))
	defer sub.Close()
	other := c.Subscribe(selector.NewSet(uid1))
	defer other.Close()
	if u := recv(t, sub); len(u.Entries) != 0 || u.Bundle == nil {
		t.Fatalf("initial state: %+v", u)
	}
	recv(t, other)

	// Several changes while the workload does not read: only the latest
	// full state is pending, and the writer never blocked.
	e1 := ent("1", "/one", now, uid0)
	e1.FederatesWith = []spiffeid.TrustDomain{fedTD}
	for i := range 3 {
		e := *e1
		e.RevisionNumber = int64(i + 1)
		if err := c.SetEntries([]*cache.Entry{&e}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.SetX509SVIDs(map[string]*cache.X509SVID{"1": a.svid(t, id("/one"), now, now.Add(time.Hour))}); err != nil {
		t.Fatal(err)
	}
	u := recv(t, sub)
	if len(u.Identities) != 1 || u.Identities[0].Entry.RevisionNumber != 3 {
		t.Fatalf("coalesced state: %+v", u)
	}
	noUpdate(t, sub)
	noUpdate(t, other) // nothing of this concerned uid:1

	// A federated bundle reaches the entry that federates with it, and
	// only that subscriber.
	if err := c.SetBundle(partner.bundle(fedTD)); err != nil {
		t.Fatal(err)
	}
	if u := recv(t, sub); u.FederatedBundles[fedTD] == nil {
		t.Fatal("federated bundle missing")
	}
	noUpdate(t, other)
	// Setting an equal bundle is not a change.
	if err := c.SetBundle(partner.bundle(fedTD)); err != nil {
		t.Fatal(err)
	}
	noUpdate(t, sub)
	// Our own bundle concerns everyone.
	nb := a.bundle(td)
	nb.AddX509Authority(partner.Cert)
	if err := c.SetBundle(nb); err != nil {
		t.Fatal(err)
	}
	recv(t, sub)
	recv(t, other)
	if err := c.RemoveBundle(td); err == nil {
		t.Fatal("own bundle removed")
	}
	if err := c.RemoveBundle(fedTD); err != nil {
		t.Fatal(err)
	}
	if u := recv(t, sub); len(u.FederatedBundles) != 0 {
		t.Fatal("removed federated bundle still served")
	}

	// After Close nothing more is delivered.
	sub.Close()
	if err := c.SetEntries(nil); err != nil {
		t.Fatal(err)
	}
	noUpdate(t, sub)
}

func TestJWTSVIDCacheHalfLife(t *testing.T) {
	clk := clock.NewFake(time.Now())
	c := newCache(t, "", clk)
	if err := c.SetEntries([]*cache.Entry{ent("1", "/one", time.Time{}, uid0)}); err != nil {
		t.Fatal(err)
	}
	now := clk.Now()
	c.SetJWTSVID(id("/one"), []string{"b", "a"}, cache.JWTSVID{Token: "tok", IssuedAt: now, ExpiresAt: now.Add(10 * time.Minute)})
	if j, ok := c.GetJWTSVID(id("/one"), []string{"a", "b", "a"}); !ok || j.Token != "tok" {
		t.Fatal("audience order/duplicates must not matter")
	}
	if _, ok := c.GetJWTSVID(id("/one"), []string{"a"}); ok {
		t.Fatal("another audience set hit")
	}
	clk.Add(5 * time.Minute)
	if _, ok := c.GetJWTSVID(id("/one"), []string{"a", "b"}); ok {
		t.Fatal("JWT-SVID served past half-life")
	}
	// Entries removed: their JWT-SVIDs go too.
	c.SetJWTSVID(id("/one"), []string{"x"}, cache.JWTSVID{Token: "t2", IssuedAt: clk.Now(), ExpiresAt: clk.Now().Add(time.Hour)})
	if err := c.SetEntries(nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.GetJWTSVID(id("/one"), []string{"x"}); ok {
		t.Fatal("JWT-SVID of a removed entry served")
	}
}

func TestPersistence(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "agent-data")
	clk := clock.NewFake(time.Now())
	a := newCA(t, td)
	now := clk.Now()
	c := newCache(t, dir, clk)
	e1 := ent("1", "/one", now, uid0, gid0)
	e1.DNSNames = []string{"one.example"}
	e1.FederatesWith = []spiffeid.TrustDomain{fedTD}
	e1.X509SVIDTTL = time.Hour
	e2 := ent("2", "/two", now, uid0)
	if err := c.SetBundle(a.bundle(td)); err != nil {
		t.Fatal(err)
	}
	if err := c.SetBundle(newCA(t, fedTD).bundle(fedTD)); err != nil {
		t.Fatal(err)
	}
	if err := c.SetEntries([]*cache.Entry{e1, e2}); err != nil {
		t.Fatal(err)
	}
	long := a.svid(t, id("/one"), now, now.Add(time.Hour))
	if err := c.SetX509SVIDs(map[string]*cache.X509SVID{
		"1": long,
		"2": a.svid(t, id("/two"), now, now.Add(10*time.Minute)),
	}); err != nil {
		t.Fatal(err)
	}

	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, cache.FileName): 0o600} {
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != want {
			t.Fatalf("%s: mode %v, want %v (%v)", path, fi.Mode().Perm(), want, err)
		}
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, ".*tmp*"))
	if len(leftovers) != 0 {
		t.Fatalf("temporary files left: %v", leftovers)
	}

	// Restart after the short SVID expired.
	clk.Add(20 * time.Minute)
	c2 := newCache(t, dir, clk)
	if err := c2.Load(); err != nil {
		t.Fatal(err)
	}
	if got := entryIDs(c2.Entries()); got != "1,2" {
		t.Fatalf("entries %s", got)
	}
	restored := c2.MatchingEntries(selector.NewSet(uid0, gid0))[0]
	if restored.DNSNames[0] != "one.example" || restored.FederatesWith[0] != fedTD || restored.X509SVIDTTL != time.Hour || !restored.CreatedAt.Equal(now) {
		t.Fatalf("entry fields lost: %+v", restored)
	}
	s, ok := c2.X509SVID("1")
	if !ok || !s.Chain[0].Equal(long.Chain[0]) || !long.PrivateKey.(*ecdsa.PrivateKey).Equal(s.PrivateKey) {
		t.Fatal("SVID or key not restored")
	}
	if _, ok := c2.X509SVID("2"); ok {
		t.Fatal("expired SVID restored")
	}
	if len(c2.Bundles()) != 2 {
		t.Fatalf("bundles %d", len(c2.Bundles()))
	}
	u := c2.FetchWorkloadUpdate(selector.NewSet(uid0, gid0))
	if len(u.Identities) != 1 || u.Bundle == nil || u.FederatedBundles[fedTD] == nil {
		t.Fatalf("restored update: %+v", u)
	}
	if got := entryIDs(c2.NeedsSVID(clk.Now(), nil)); got != "2" {
		t.Fatalf("NeedsSVID after restore: %s", got)
	}

	// Fresh start, wrong trust domain, corrupt file.
	if err := newCache(t, filepath.Join(t.TempDir(), "none"), clk).Load(); err != nil {
		t.Fatalf("missing file: %v", err)
	}
	if err := cache.New(cache.Config{Dir: dir, TrustDomain: fedTD, Clock: clk}).Load(); err == nil {
		t.Fatal("loaded another trust domain's cache")
	}
	if err := os.WriteFile(filepath.Join(dir, cache.FileName), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := newCache(t, dir, clk).Load(); err == nil {
		t.Fatal("corrupt file loaded")
	}
}

func TestExpiryFilteredOnRead(t *testing.T) {
	clk := clock.NewFake(time.Now())
	c := newCache(t, "", clk)
	a := newCA(t, td)
	now := clk.Now()
	if err := c.SetEntries([]*cache.Entry{ent("1", "/one", now, uid0)}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetX509SVIDs(map[string]*cache.X509SVID{"1": a.svid(t, id("/one"), now, now.Add(time.Minute))}); err != nil {
		t.Fatal(err)
	}
	if u := c.FetchWorkloadUpdate(selector.NewSet(uid0)); len(u.Identities) != 1 {
		t.Fatal("valid SVID not served")
	}
	clk.Add(time.Minute)
	if u := c.FetchWorkloadUpdate(selector.NewSet(uid0)); len(u.Identities) != 0 || len(u.Entries) != 1 {
		t.Fatalf("at NotAfter: %d identities", len(u.Identities))
	}
}
