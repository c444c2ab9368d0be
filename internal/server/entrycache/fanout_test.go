package entrycache_test

import (
	"context"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/datastore/sqlstore"
	"github.com/sigil-spiffe/sigil/internal/server/entrycache"
)

// TestBatchWakes applies several entry changes in ONE journal batch and
// checks that exactly the right subscribers are woken: the agents whose
// reach holds a changed entry's old or new parent, those whose node
// selectors match a changed alias entry, and those with no recorded reach;
// not the others.
func TestBatchWakes(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	agent := func(n string) string { return td + "/spire/agent/" + n }
	f.node(t, agent("old"), "k:1")
	f.node(t, agent("new"))
	f.node(t, agent("del"))
	f.node(t, agent("alias"), "k:1", "k:2", "z:9")
	f.node(t, agent("partial"), "k:1")
	f.node(t, agent("other"), "z:9")
	f.node(t, agent("none"))
	f.create(t,
		entry("ownedOld", td+"/w/owned-old", agent("old"), "u:1"),
		entry("mv", td+"/w/mv", td+"/w/owned-old", "u:2"),
		entry("ownedNew", td+"/w/owned-new", agent("new"), "u:3"),
		entry("gone", td+"/w/gone", agent("del"), "u:4"),
		entry("otherOwn", td+"/w/other", agent("other"), "u:5"),
		entry("partialOwn", td+"/w/partial", agent("partial"), "u:6"),
	)
	if err := f.cache.Load(ctx); err != nil {
		t.Fatal(err)
	}
	names := []string{"old", "new", "del", "alias", "partial", "other", "none"}
	chans := make(map[string]<-chan struct{})
	for _, n := range names {
		ch, unsub := f.cache.Subscribe(mustID(agent(n)))
		t.Cleanup(unsub)
		chans[n] = ch
		if n != "none" { // "none" keeps no recorded reach
			authorized(t, f.cache, agent(n))
		}
		drain(ch)
	}

	// One batch: a move (old parent in "old"'s reach, new parent in
	// "new"'s), a delete (parent "del"), a new alias matching "alias" only
	// ("partial" lacks k:2), an entry under an unknown parent.
	if _, err := f.st.UpdateEntry(ctx, &datastore.Entry{ID: "mv", ParentID: td + "/w/owned-new"}, &datastore.EntryMask{ParentID: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.st.DeleteEntries(ctx, []string{"gone"}); err != nil {
		t.Fatal(err)
	}
	f.create(t,
		entry("newAlias", td+"/alias/k", td+"/spire/server", "k:1", "k:2"),
		entry("stray", td+"/w/stray", td+"/spire/agent/nobody", "u:7"),
	)
	if err := f.cache.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"old": true, "new": true, "del": true, "alias": true, "none": true}
	for _, n := range names {
		if got := pending(chans[n]); got != want[n] {
			t.Errorf("agent %s woken = %v, want %v", n, got, want[n])
		}
	}
	// The batch was applied: the move and the alias are in effect.
	if got := authorized(t, f.cache, agent("new")); !slices.Equal(got, []string{"mv", "ownedNew"}) {
		t.Errorf("agent new authorized for %v", got)
	}

	// A batch touching only parents nobody reaches wakes only "none".
	f.create(t, entry("stray2", td+"/w/stray2", td+"/spire/agent/nobody", "u:8"))
	if err := f.cache.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if got := pending(chans[n]); got != (n == "none") {
			t.Errorf("unrelated batch: agent %s woken = %v", n, got)
		}
	}
}

// BenchmarkApplyEntryBatchWithSubscribers measures applying one journal
// batch of 1,000 entry creates (Sync: reading the journal and the entries,
// applying them under the write lock, waking the subscribers) while 10,000
// agents are subscribed, each with a recorded reach (one entry of its own).
// The batch's entries are parented to every tenth agent: 1,000 are woken.
// Creating the batch in the store is not timed.
func BenchmarkApplyEntryBatchWithSubscribers(b *testing.B) {
	const agents, batch = 10_000, 1_000
	ctx := context.Background()
	clk := clock.NewFake(t0)
	st, err := sqlstore.Open(ctx, sqlstore.Config{DatabaseType: "sqlite3", ConnectionString: filepath.Join(b.TempDir(), "ds.sqlite3"), Clock: clk})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	agentID := func(a int) string { return td + "/spire/agent/" + itoa(a) }
	var es []*datastore.Entry
	for a := range agents {
		es = append(es, entry("", td+"/w/"+itoa(a), agentID(a), "u:1"))
	}
	createAll(b, st, es)
	c := entrycache.New(entrycache.Config{Store: st, Clock: clk})
	if err := c.Load(ctx); err != nil {
		b.Fatal(err)
	}
	for a := range agents {
		_, unsub := c.Subscribe(mustID(agentID(a)))
		defer unsub()
		if _, err := c.AuthorizedEntries(ctx, mustID(agentID(a))); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		es = es[:0]
		for k := range batch {
			es = append(es, entry("", td+"/w/new/"+itoa(i)+"/"+itoa(k), agentID(k*(agents/batch)), "u:2"))
		}
		createAll(b, st, es)
		b.StartTimer()
		if err := c.Sync(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

func createAll(b *testing.B, st *sqlstore.Store, es []*datastore.Entry) {
	b.Helper()
	res, err := st.CreateEntries(context.Background(), es)
	if err != nil {
		b.Fatal(err)
	}
	for _, r := range res {
		if r.Err != nil {
			b.Fatal(r.Err)
		}
	}
}
