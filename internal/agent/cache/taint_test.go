package cache_test

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// TestTaintX509SVIDs: only the SVIDs whose chain leads to a tainted
// authority become due for renewal, each counted once, until a new SVID
// is set for their entry.
func TestTaintX509SVIDs(t *testing.T) {
	clk := clock.NewFake(time.Now())
	c := newCache(t, "", clk)
	oldCA, nextCA := newCA(t, td), newCA(t, td)
	now := clk.Now()
	if err := c.SetEntries([]*cache.Entry{ent("a", "/a", now, uid0), ent("b", "/b", now, uid0)}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetX509SVIDs(map[string]*cache.X509SVID{
		"a": oldCA.svid(t, id("/a"), now.Add(-time.Minute), now.Add(time.Hour)),
		"b": nextCA.svid(t, id("/b"), now.Add(-time.Minute), now.Add(time.Hour)),
	}); err != nil {
		t.Fatal(err)
	}
	if due := c.NeedsSVID(now, nil); len(due) != 0 {
		t.Fatalf("%d entries due before any taint", len(due))
	}
	tainted := []*x509.Certificate{oldCA.Roots()[0]}
	if n := c.TaintX509SVIDs(tainted); n != 1 {
		t.Fatalf("TaintX509SVIDs marked %d SVIDs, want the one the old CA signed", n)
	}
	if due := c.NeedsSVID(now, nil); entryIDs(due) != "a" {
		t.Fatalf("due after the taint: %q, want a", entryIDs(due))
	}
	if n := c.TaintX509SVIDs(tainted); n != 0 {
		t.Fatalf("the same taint again marked %d SVIDs", n)
	}
	if err := c.SetX509SVIDs(map[string]*cache.X509SVID{"a": nextCA.svid(t, id("/a"), now.Add(-time.Minute), now.Add(time.Hour))}); err != nil {
		t.Fatal(err)
	}
	if due := c.NeedsSVID(now, nil); len(due) != 0 {
		t.Fatalf("%d entries due after a's SVID was renewed by the new CA", len(due))
	}
}

// TestDropJWTSVIDsSignedBy: the cached JWT-SVIDs signed with a tainted key
// are forgotten (also on disk), the others kept.
func TestDropJWTSVIDsSignedBy(t *testing.T) {
	e := newJWTEnv(t, cache.Config{}, "/a", "/b")
	other := testca.NewJWTKey(t, "jwt-key-2")
	b, _ := e.c.Bundle(td)
	b = b.Clone()
	other.AddTo(t, b)
	if err := e.c.SetBundle(b); err != nil {
		t.Fatal(err)
	}
	e.set(t, "/a", []string{"x"}, time.Hour)
	kept := e.setSigned(t, other, "/b", "/b", []string{"x"}, time.Hour)
	if n := e.c.DropJWTSVIDsSignedBy(map[string]struct{}{"jwt-key-1": {}}); n != 1 {
		t.Fatalf("dropped %d JWT-SVIDs, want the one signed with the tainted key", n)
	}
	for _, c := range []*cache.Cache{e.c, e.restart(t)} {
		if _, ok := c.GetJWTSVID(id("/a"), []string{"x"}); ok {
			t.Fatal("the JWT-SVID signed with the tainted key is still cached")
		}
		if got, ok := c.GetJWTSVID(id("/b"), []string{"x"}); !ok || got.Token != kept.Token {
			t.Fatal("the JWT-SVID signed with another key was dropped")
		}
	}
}
