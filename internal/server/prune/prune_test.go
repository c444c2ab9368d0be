package prune_test

import (
	"context"
	"crypto/sha256"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/datastore/sqlstore"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/server/prune"
)

var t0 = time.Unix(1_800_000_000, 0)

func open(t *testing.T, clk clock.Clock) *sqlstore.Store {
	t.Helper()
	st, err := sqlstore.Open(context.Background(), sqlstore.Config{DatabaseType: "sqlite3", ConnectionString: filepath.Join(t.TempDir(), "ds.sqlite3"), Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func createEntry(t *testing.T, st *sqlstore.Store, spiffeID string, expiresAt int64) {
	t.Helper()
	res, err := st.CreateEntries(context.Background(), []*datastore.Entry{{SPIFFEID: spiffeID, ParentID: "spiffe://example.org/agent",
		Selectors: []selector.Selector{{Type: "unix", Value: "uid:1"}}, ExpiresAt: expiresAt}})
	if err != nil || res[0].Err != nil {
		t.Fatal(err, res[0].Err)
	}
}

func entryEvents(t *testing.T, st *sqlstore.Store) int {
	t.Helper()
	evs, err := st.ListEntryEvents(context.Background(), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	return len(evs)
}

// TestPrune: a round deletes expired join tokens and entries at once, and
// journal events only once they are older than the retention, recording
// the journal's horizon.
func TestPrune(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewFake(t0)
	st := open(t, clk)
	token := &datastore.JoinToken{Hash: sha256.Sum256([]byte("token")), ExpiresAt: t0.Add(time.Minute).Unix()}
	if err := st.CreateJoinToken(ctx, token); err != nil {
		t.Fatal(err)
	}
	createEntry(t, st, "spiffe://example.org/expiring", t0.Add(time.Minute).Unix())
	createEntry(t, st, "spiffe://example.org/kept", 0)
	p := prune.New(prune.Config{Store: st, Clock: clk, EventRetention: time.Hour})

	clk.Add(30 * time.Minute)
	p.Prune(ctx)
	if _, err := st.GetJoinToken(ctx, token.Hash); err == nil {
		t.Error("an expired join token was kept")
	}
	if n, _ := st.CountEntries(ctx, datastore.EntryFilter{}); n != 1 {
		t.Errorf("%d entries after the prune, want 1 (the expired one deleted)", n)
	}
	// Two creations and the expired entry's deletion, younger than an hour.
	if n := entryEvents(t, st); n != 3 {
		t.Fatalf("%d entry events after 30 min, want 3 (retention 1h)", n)
	}
	clk.Add(31 * time.Minute)
	p.Prune(ctx)
	// The creations are 61 min old, the deletion 31 min.
	if n := entryEvents(t, st); n != 1 {
		t.Fatalf("%d entry events after 61 min, want 1", n)
	}
	if h, err := st.JournalHorizons(ctx); err != nil || h.Entry == 0 {
		t.Fatalf("JournalHorizons = %+v, %v; want the entry journal's", h, err)
	}
}

// TestRunPrunesJournals: the loop prunes the journals every Interval (the
// journals grew forever while nothing called PruneEvents).
func TestRunPrunesJournals(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clk := clock.NewFake(t0)
	st := open(t, clk)
	createEntry(t, st, "spiffe://example.org/a", 0)
	done := make(chan error, 1)
	go func() { done <- prune.New(prune.Config{Store: st, Clock: clk}).Run(ctx) }()
	deadline := time.Now().Add(30 * time.Second)
	for entryEvents(t, st) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the entry journal was not pruned %s after its event (default retention %s)", clk.Now().Sub(t0), prune.DefaultEventRetention)
		}
		clk.Add(prune.DefaultInterval)
		time.Sleep(time.Millisecond)
	}
	if age := clk.Now().Sub(t0); age <= prune.DefaultEventRetention {
		t.Fatalf("pruned after %s, before the retention (%s)", age, prune.DefaultEventRetention)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestMinEventRetention: a retention shorter than MinEventRetention (a
// follower could still be waiting for a skipped ID) is raised to it.
func TestMinEventRetention(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewFake(t0)
	st := open(t, clk)
	createEntry(t, st, "spiffe://example.org/a", 0)
	p := prune.New(prune.Config{Store: st, Clock: clk, EventRetention: time.Second})
	clk.Add(prune.MinEventRetention - time.Second)
	p.Prune(ctx)
	if n := entryEvents(t, st); n != 1 {
		t.Fatalf("an event younger than MinEventRetention (%s) was pruned", prune.MinEventRetention)
	}
	clk.Add(2 * time.Second)
	p.Prune(ctx)
	if n := entryEvents(t, st); n != 0 {
		t.Fatalf("an event older than MinEventRetention was kept")
	}
}
