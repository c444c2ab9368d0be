package unix

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clock"
)

// countingLookup answers from names, counting calls; err, when set, is
// returned instead.
type countingLookup struct {
	names map[uint32]string
	err   error
	calls int
}

func (l *countingLookup) lookup(id uint32) (string, bool, error) {
	l.calls++
	if l.err != nil {
		return "", false, l.err
	}
	n, ok := l.names[id]
	return n, ok, nil
}

func newTestCache(t *testing.T, ttl time.Duration) (*nameCache, *countingLookup, *clock.Fake, string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(file, []byte("alice:x:1000:1000::/:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l := &countingLookup{names: map[uint32]string{1000: "alice"}}
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	c := newNameCache(file, l.lookup, ttl, clk)
	c.racy = 0
	return c, l, clk, file
}

func expectName(t *testing.T, c *nameCache, id uint32, want string, wantFound bool) {
	t.Helper()
	got, found := c.name(id)
	if got != want || found != wantFound {
		t.Fatalf("name(%d) = %q, %v; want %q, %v", id, got, found, want, wantFound)
	}
}

func TestNameCacheHitsAndExpires(t *testing.T) {
	c, l, clk, _ := newTestCache(t, time.Minute)
	expectName(t, c, 1000, "alice", true)
	expectName(t, c, 1000, "alice", true)
	expectName(t, c, 4242, "", false) // absence is cached too
	expectName(t, c, 4242, "", false)
	if l.calls != 2 {
		t.Fatalf("%d lookups, want 2 (one per ID)", l.calls)
	}
	clk.Add(time.Minute)
	l.names[1000] = "alice2"
	expectName(t, c, 1000, "alice2", true)
	if l.calls != 3 {
		t.Fatalf("%d lookups after the TTL, want 3", l.calls)
	}
}

func TestNameCacheDroppedWhenFileChanges(t *testing.T) {
	c, l, _, file := newTestCache(t, time.Hour)
	expectName(t, c, 1000, "alice", true)
	expectName(t, c, 2000, "", false)
	// Renamed user, and a new one: the database file is rewritten.
	l.names[1000] = "bob"
	l.names[2000] = "carol"
	if err := os.WriteFile(file, []byte("bob:x:1000:1000::/:/bin/sh\ncarol:x:2000:2000::/:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	expectName(t, c, 1000, "bob", true)
	expectName(t, c, 2000, "carol", true)
	// Replaced by rename (new inode), same size and mtime as before.
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	tmp := file + ".new"
	if err := os.WriteFile(tmp, []byte("dave:x:1000:1000::/:/bin/sh\ncarol:x:2000:2000::/:/bin/s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(tmp, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
	l.names[1000] = "dave"
	expectName(t, c, 1000, "dave", true)
	// A missing database is never cached from.
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	before := l.calls
	expectName(t, c, 1000, "dave", true)
	expectName(t, c, 1000, "dave", true)
	if l.calls != before+2 {
		t.Fatalf("%d lookups with the file missing, want 2", l.calls-before)
	}
}

func TestNameCacheSkipsRecentlyChangedFileAndErrors(t *testing.T) {
	c, l, _, _ := newTestCache(t, time.Hour)
	c.racy = time.Hour // the file was just written
	expectName(t, c, 1000, "alice", true)
	expectName(t, c, 1000, "alice", true)
	if l.calls != 2 {
		t.Fatalf("%d lookups of a just-changed database, want 2 (not cached)", l.calls)
	}
	c.racy = 0
	l.err = errors.New("nss down")
	expectName(t, c, 1000, "", false)
	l.err = nil
	expectName(t, c, 1000, "alice", true)
	expectName(t, c, 1000, "alice", true)
	if l.calls != 4 {
		t.Fatalf("%d lookups, want 4 (errors are not cached)", l.calls)
	}
}

func TestNameCacheDisabled(t *testing.T) {
	c, l, _, _ := newTestCache(t, -1)
	expectName(t, c, 1000, "alice", true)
	expectName(t, c, 1000, "alice", true)
	if l.calls != 2 {
		t.Fatalf("%d lookups with caching disabled, want 2", l.calls)
	}
}
