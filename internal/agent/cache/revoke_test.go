package cache_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// TestRevoke: Revoke drops everything at once (an open subscription gets a
// state with no entry, a watcher is signalled), deletes the persisted file
// and writes nothing while revoked; SetEntries ends the revocation.
func TestRevoke(t *testing.T) {
	dir := t.TempDir()
	c := newCache(t, dir, nil)
	ca := newCA(t, td)
	now := time.Now()
	if err := c.SetBundle(ca.bundle(td)); err != nil {
		t.Fatal(err)
	}
	if err := c.SetEntries([]*cache.Entry{ent("1", "/one", now, uid0)}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetX509SVIDs(map[string]*cache.X509SVID{"1": ca.svid(t, id("/one"), now.Add(-time.Minute), now.Add(time.Hour))}); err != nil {
		t.Fatal(err)
	}
	c.SetJWTSVID(id("/one"), []string{"a"}, cache.JWTSVID{Token: "tok", IssuedAt: now, ExpiresAt: now.Add(time.Hour)})
	path := filepath.Join(dir, cache.FileName)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("nothing persisted before the revocation: %v", err)
	}
	sub := c.Subscribe(selector.NewSet(uid0))
	defer sub.Close()
	if u := recv(t, sub); len(u.Identities) != 1 {
		t.Fatalf("before: %d identities, want 1", len(u.Identities))
	}
	changes, stop := c.Watch()
	defer stop()

	if err := c.Revoke(); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if !c.Revoked() {
		t.Fatal("Revoked() = false after Revoke")
	}
	u := recv(t, sub)
	if len(u.Entries) != 0 || len(u.Identities) != 0 || u.Bundle != nil {
		t.Fatalf("after Revoke a subscriber sees %d entries, %d identities, bundle %v", len(u.Entries), len(u.Identities), u.Bundle != nil)
	}
	if !watchSignalledExt(changes) {
		t.Fatal("watcher not signalled by Revoke")
	}
	if len(c.Entries()) != 0 || len(c.Bundles()) != 0 {
		t.Fatal("entries or bundles left after Revoke")
	}
	if _, ok := c.GetJWTSVID(id("/one"), []string{"a"}); ok {
		t.Fatal("JWT-SVID served after Revoke")
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("persisted cache still there after Revoke: %v", err)
	}
	// Nothing is persisted while revoked (a bundle set by a late writer).
	if err := c.SetBundle(ca.bundle(td)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("revoked cache persisted again: %v", err)
	}
	c.SetJWTSVID(id("/one"), []string{"b"}, cache.JWTSVID{Token: "late", IssuedAt: now, ExpiresAt: now.Add(time.Hour)})
	if _, ok := c.GetJWTSVID(id("/one"), []string{"b"}); ok {
		t.Fatal("a JWT-SVID set while revoked is cached")
	}

	// Attested again: the new set ends the revocation and is persisted.
	if err := c.SetEntries([]*cache.Entry{ent("2", "/two", now, uid0)}); err != nil {
		t.Fatal(err)
	}
	if c.Revoked() {
		t.Fatal("still revoked after SetEntries")
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("not persisted after SetEntries: %v", err)
	}
	if u := recv(t, sub); len(u.Entries) != 1 || u.Entries[0].ID != "2" {
		t.Fatalf("after SetEntries: %d entries", len(u.Entries))
	}
	// A restart does not bring back anything from before the revocation.
	d := newCache(t, dir, nil)
	if err := d.Load(); err != nil {
		t.Fatal(err)
	}
	if es := d.Entries(); len(es) != 1 || es[0].ID != "2" {
		t.Fatalf("reloaded %d entries, want only the new one", len(es))
	}
}

// TestRevokeEmptySetEndsIt: an empty authorized set after re-attestation
// still ends the revocation.
func TestRevokeEmptySetEndsIt(t *testing.T) {
	c := newCache(t, "", nil)
	if err := c.Revoke(); err != nil {
		t.Fatal(err)
	}
	if err := c.SetEntries(nil); err != nil {
		t.Fatal(err)
	}
	if c.Revoked() {
		t.Fatal("SetEntries(nil) did not end the revocation")
	}
}

func watchSignalledExt(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
