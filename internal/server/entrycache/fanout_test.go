package entrycache_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/datastore/sqlstore"
	"github.com/sigil-spiffe/sigil/internal/server/entrycache"
)

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
