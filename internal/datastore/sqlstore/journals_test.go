package sqlstore

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/datastore"
)

// TestListCAJournals: every server's journal, by name, with its latest
// data; none is an empty map.
func (x suite) TestListCAJournals(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	got, err := s.ListCAJournals(ctx)
	if err != nil || got == nil || len(got) != 0 {
		t.Fatalf("ListCAJournals on an empty store = %v, %v", got, err)
	}
	for _, j := range []struct{ name, data string }{{"ca", "1"}, {"ca-b", "2"}, {"ca", "3"}} {
		if err := s.SetCAJournal(ctx, j.name, []byte(j.data)); err != nil {
			t.Fatal(err)
		}
	}
	got, err = s.ListCAJournals(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{"ca": []byte("3"), "ca-b": []byte("2")}
	if !maps.EqualFunc(got, want, func(a, b []byte) bool { return string(a) == string(b) }) {
		t.Errorf("ListCAJournals = %q, want %q", got, want)
	}
}

// TestPruneEventsHorizon: PruneEvents deletes the events created before t
// from each journal and records the highest ID it deleted as the
// journal's horizon; the journal's last ID survives the journal being
// pruned empty, and a journal pruned in several batches ends at the same
// horizon.
func (x suite) TestPruneEventsHorizon(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	if h, err := s.JournalHorizons(ctx); err != nil || h != (datastore.JournalHorizons{}) {
		t.Fatalf("JournalHorizons of a new store = %+v, %v", h, err)
	}
	old := mustCreate(t, s,
		&datastore.Entry{SPIFFEID: "spiffe://td/1", ParentID: "spiffe://td/p", Selectors: sels("a:1")},
		&datastore.Entry{SPIFFEID: "spiffe://td/2", ParentID: "spiffe://td/p", Selectors: sels("a:2")},
		&datastore.Entry{SPIFFEID: "spiffe://td/3", ParentID: "spiffe://td/p", Selectors: sels("a:3")},
	)
	if _, err := s.CreateNode(ctx, &datastore.AttestedNode{SPIFFEID: "spiffe://td/agent/1", AttestationType: "join_token", CertSerial: "1"}); err != nil {
		t.Fatal(err)
	}
	addBundles(t, s, "td1")
	lastOldEntry, _ := s.LastEntryEventID(ctx)
	lastOldNode, _ := s.LastNodeEventID(ctx)
	lastOldBundle, _ := s.LastBundleEventID(ctx)

	f.clk.Add(time.Hour)
	mustCreate(t, s, &datastore.Entry{SPIFFEID: "spiffe://td/4", ParentID: "spiffe://td/p", Selectors: sels("a:4")})
	if _, err := s.CreateNode(ctx, &datastore.AttestedNode{SPIFFEID: "spiffe://td/agent/2", AttestationType: "join_token", CertSerial: "2"}); err != nil {
		t.Fatal(err)
	}
	lastEntry, _ := s.LastEntryEventID(ctx)

	// Three entry events, one node event, one bundle event are older.
	defer func(b int64) { pruneBatch = b }(pruneBatch)
	pruneBatch = 2
	n, err := s.PruneEvents(ctx, f.clk.Now().Add(-time.Minute))
	if err != nil || n != 5 {
		t.Fatalf("PruneEvents = %d, %v; want 5", n, err)
	}
	h, err := s.JournalHorizons(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := (datastore.JournalHorizons{Entry: lastOldEntry, Node: lastOldNode, Bundle: lastOldBundle}); h != want {
		t.Fatalf("JournalHorizons = %+v, want %+v", h, want)
	}
	evs, _ := s.ListEntryEvents(ctx, 0, 0)
	if len(evs) != 1 || evs[0].ID != lastEntry {
		t.Fatalf("entry events after the prune: %v, want the newer one (%d)", evs, lastEntry)
	}
	if _, err := s.GetEntry(ctx, old[0].ID); err != nil {
		t.Fatalf("pruning events deleted an entry: %v", err)
	}

	// Pruned empty, a journal keeps its position; the horizon never moves
	// back.
	f.clk.Add(time.Hour)
	if _, err := s.PruneEvents(ctx, f.clk.Now()); err != nil {
		t.Fatal(err)
	}
	if evs, _ := s.ListEntryEvents(ctx, 0, 0); len(evs) != 0 {
		t.Fatalf("entry events left: %v", evs)
	}
	if last, err := s.LastEntryEventID(ctx); err != nil || last != lastEntry {
		t.Fatalf("LastEntryEventID of a journal pruned empty = %d, %v; want %d", last, err, lastEntry)
	}
	if h, _ := s.JournalHorizons(ctx); h.Entry != lastEntry || h.Bundle != lastOldBundle {
		t.Fatalf("JournalHorizons = %+v, want entry %d, bundle %d", h, lastEntry, lastOldBundle)
	}
	if n, err := s.PruneEvents(ctx, f.clk.Now()); err != nil || n != 0 {
		t.Fatalf("PruneEvents of empty journals = %d, %v", n, err)
	}
	if h2, _ := s.JournalHorizons(ctx); h2.Entry != lastEntry {
		t.Fatalf("the entry horizon moved to %d", h2.Entry)
	}
}
