package entrycache_test

import (
	"bytes"
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/datastore/sqlstore"
	"github.com/sigil-spiffe/sigil/internal/server/entrycache"
	"github.com/sigil-spiffe/sigil/internal/testutil/pgtest"
)

// syncBuffer is a bytes.Buffer safe for a logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestFellBehindPrunedJournals: a cache (a server) that did not apply the
// journals while other writes were made and then pruned (stopped or cut
// off from the database for longer than the retention) notices that the
// events it had not applied are gone and reloads in full, on both
// backends: with a newer event after the pruned ones (its read sees only
// a jump of IDs, which looks like writes still in flight) and with none
// (its read sees nothing new). A cache that keeps up is not reloaded by
// pruning. Without the horizon check the first case keeps a deleted entry
// and misses a new one, and the second misses everything.
func TestFellBehindPrunedJournals(t *testing.T) {
	for _, b := range []struct {
		name string
		open func(t *testing.T) (*sqlstore.Store, *clock.Fake)
	}{
		{"sqlite3", func(t *testing.T) (*sqlstore.Store, *clock.Fake) {
			f := newFixture(t)
			return f.st, f.clk
		}},
		{"postgres", func(t *testing.T) (*sqlstore.Store, *clock.Fake) {
			pgtest.Require(t)
			f := newPGFixture(t)
			return f.st, f.clk
		}},
	} {
		for _, newer := range []bool{true, false} {
			name := b.name + "/newer-event"
			if !newer {
				name = b.name + "/nothing-newer"
			}
			t.Run(name, func(t *testing.T) {
				st, clk := b.open(t)
				fellBehind(t, st, clk, newer)
			})
		}
	}
}

func fellBehind(t *testing.T, st *sqlstore.Store, clk *clock.Fake, newer bool) {
	ctx := context.Background()
	f := &fixture{st: st, clk: clk}
	a1 := td + "/spire/agent/a1"
	f.node(t, a1)
	f.create(t, entry("A", td+"/A", a1, "u:1"), entry("B", td+"/B", a1, "u:1"))
	addBundle(t, st, "fed.example")

	var logs syncBuffer
	var bundleChanges atomic.Int32
	behind := entrycache.New(entrycache.Config{Store: st, Clock: clk, Log: slog.New(slog.NewTextHandler(&logs, nil)),
		BundleChanged: func() { bundleChanges.Add(1) }})
	if err := behind.Load(ctx); err != nil {
		t.Fatal(err)
	}
	// A cache that keeps up, applying every change as it is made.
	upToDate := entrycache.New(entrycache.Config{Store: st, Clock: clk})
	if err := upToDate.Load(ctx); err != nil {
		t.Fatal(err)
	}
	wake, cancel := behind.Subscribe(mustID(a1))
	defer cancel()

	// Changes made while "behind" does not apply the journals.
	f.create(t, entry("C", td+"/C", a1, "u:1"))
	if _, err := st.DeleteEntries(ctx, []string{"A"}); err != nil {
		t.Fatal(err)
	}
	a2 := td + "/spire/agent/a2"
	f.node(t, a2)
	f.create(t, entry("D", td+"/D", a2, "u:1"))
	if _, err := st.AppendBundle(ctx, &datastore.Bundle{TrustDomain: "fed.example", X509Authorities: []datastore.X509Authority{{ASN1: []byte("ca-2")}}}); err != nil {
		t.Fatal(err)
	}
	if err := upToDate.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// Two hours later, events older than an hour are pruned: all of them.
	clk.Add(2 * time.Hour)
	if n, err := st.PruneEvents(ctx, clk.Now().Add(-time.Hour)); err != nil || n == 0 {
		t.Fatalf("PruneEvents = %d, %v", n, err)
	}
	want := []string{"B", "C"}
	if newer {
		f.create(t, entry("E", td+"/E", a1, "u:1"))
		want = []string{"B", "C", "E"}
	}
	select {
	case <-wake:
	default:
	}

	if err := behind.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := authorized(t, behind, a1); !slices.Equal(got, want) {
		t.Fatalf("agent a1 after the cache fell behind the pruned journal: %v, want %v", got, want)
	}
	if got := authorized(t, behind, a2); !slices.Equal(got, []string{"D"}) {
		t.Fatalf("agent a2 (attested while the cache was behind): %v, want [D]", got)
	}
	select {
	case <-wake:
	default:
		t.Fatal("the reload woke no subscriber")
	}
	if bundleChanges.Load() == 0 {
		t.Fatal("a bundle change pruned before the cache saw it was not reported")
	}
	if n := strings.Count(logs.String(), "were pruned"); n != 1 {
		t.Fatalf("%d reload warnings, want 1:\n%s", n, logs.String())
	}

	// Reloaded, it follows the journal again without reloading; the cache
	// that kept up never reloads.
	f.create(t, entry("F", td+"/F", a1, "u:1"))
	clk.Add(time.Minute)
	for _, c := range []*entrycache.Cache{behind, upToDate} {
		if err := c.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if got := authorized(t, c, a1); !slices.Contains(got, "F") || slices.Contains(got, "A") {
			t.Fatalf("after the reload: %v", got)
		}
	}
	if n := strings.Count(logs.String(), "were pruned"); n != 1 {
		t.Fatalf("%d reload warnings after the reload, want 1:\n%s", n, logs.String())
	}
}

func addBundle(t *testing.T, st *sqlstore.Store, td string) {
	t.Helper()
	if _, err := st.CreateBundle(context.Background(), &datastore.Bundle{TrustDomain: td, X509Authorities: []datastore.X509Authority{{ASN1: []byte("ca-1")}}}); err != nil {
		t.Fatal(err)
	}
}
