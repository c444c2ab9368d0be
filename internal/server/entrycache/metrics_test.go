package entrycache_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/server/entrycache"
)

type syncRecord struct {
	at      time.Time
	lag     time.Duration
	pending bool
}

type recordMetrics struct {
	mu  sync.Mutex
	got []syncRecord
}

func (m *recordMetrics) EntryCacheSynced(at time.Time, lag time.Duration, pending bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.got = append(m.got, syncRecord{at, lag, pending})
}

func (m *recordMetrics) last(t *testing.T) syncRecord {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.got) == 0 {
		t.Fatal("no EntryCacheSynced call")
	}
	return m.got[len(m.got)-1]
}

// A sync reports when it ran and, after a Poke (the store's, for every
// write), how long the poked write waited; a sync with nothing poked
// reports no pending write. Counts
// follows entries, nodes and bans.
func TestSyncMetricsAndCounts(t *testing.T) {
	f := newFixture(t)
	m := &recordMetrics{}
	c := entrycache.New(entrycache.Config{Store: f.st, Clock: f.clk, Metrics: m})
	ctx := context.Background()
	if e, n, b := c.Counts(); e != 0 || n != 0 || b != 0 {
		t.Fatalf("before Load: %d %d %d", e, n, b)
	}
	if err := c.Load(ctx); err != nil {
		t.Fatal(err)
	}
	f.node(t, "spiffe://example.org/agent/1")
	f.node(t, "spiffe://example.org/agent/2")
	f.create(t, entry("", td+"/w1", td+"/agent/1", "unix:uid:1"), entry("", td+"/w2", td+"/agent/1", "unix:uid:2"))
	f.clk.Add(3 * time.Second)
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if r := m.last(t); !r.pending || r.lag != 3*time.Second || !r.at.Equal(f.clk.Now()) {
		t.Fatalf("after a poked write: %+v, want pending, lag 3s at %s", r, f.clk.Now())
	}
	if e, n, b := c.Counts(); e != 2 || n != 2 || b != 0 {
		t.Fatalf("Counts = %d entries %d nodes %d banned, want 2 2 0", e, n, b)
	}
	// A ban (serials cleared) is counted.
	if _, err := f.st.UpdateNode(ctx, &datastore.AttestedNode{SPIFFEID: td + "/agent/2"}, &datastore.NodeMask{CertSerial: true, NewCertSerial: true}); err != nil {
		t.Fatal(err)
	}
	f.clk.Add(time.Second)
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if r := m.last(t); !r.pending || r.lag != time.Second {
		t.Fatalf("after the ban: %+v, want pending, lag 1s", r)
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if r := m.last(t); r.pending || r.lag != 0 {
		t.Fatalf("a sync without a poke: %+v, want nothing pending", r)
	}
	if _, _, b := c.Counts(); b != 1 {
		t.Fatalf("banned = %d, want 1", b)
	}
}
