package entrycache_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/server/entrycache"
)

// countingStore counts GetNode calls, to tell memory answers from store reads.
type countingStore struct {
	entrycache.Store
	getNode int
}

func (s *countingStore) GetNode(ctx context.Context, id string) (*datastore.AttestedNode, error) {
	s.getNode++
	return s.Store.GetNode(ctx, id)
}

func getNode(t *testing.T, c *entrycache.Cache, id string) *datastore.AttestedNode {
	t.Helper()
	n, err := c.GetNode(context.Background(), id)
	if err != nil {
		t.Fatalf("GetNode(%s): %v", id, err)
	}
	return n
}

// TestGetNodeReadYourWrites checks the consistency documented on GetNode,
// with no Run: a write followed by Poke is seen by the next GetNode; a
// write without Poke (another server's) only after the journal is applied.
func TestGetNodeReadYourWrites(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	cs := &countingStore{Store: f.st}
	c := entrycache.New(entrycache.Config{Store: cs, Clock: f.clk, PollInterval: time.Hour})
	a1, a2 := td+"/spire/agent/a1", td+"/spire/agent/a2"
	f.node(t, a1, "a:1")
	if _, err := c.GetNode(ctx, a1); !errors.Is(err, entrycache.ErrNotLoaded) {
		t.Fatalf("GetNode before Load: %v, want ErrNotLoaded", err)
	}
	if err := c.Load(ctx); err != nil {
		t.Fatal(err)
	}

	// Served from memory: no store read.
	cs.getNode = 0
	n := getNode(t, c, a1)
	if n.CertSerial != "1" || n.AttestationType != "join_token" || len(n.Selectors) != 1 || cs.getNode != 0 {
		t.Fatalf("cached node = %+v (store reads %d)", n, cs.getNode)
	}
	n.CertSerial = "mutated" // a private copy
	if getNode(t, c, a1).CertSerial != "1" {
		t.Fatal("GetNode returned the cached record itself")
	}

	// A node not applied yet (attested an instant ago) is read from the store.
	f.node(t, a2)
	if n := getNode(t, c, a2); n.SPIFFEID != a2 || cs.getNode != 1 {
		t.Fatalf("uncached node = %+v (store reads %d)", n, cs.getNode)
	}
	if _, err := c.GetNode(ctx, td+"/spire/agent/none"); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("missing node: %v, want ErrNotFound", err)
	}

	// Another server bans a1 (no Poke here): not seen until the journal is
	// applied (the poll).
	ban := func() {
		t.Helper()
		if _, err := f.st.UpdateNode(ctx, &datastore.AttestedNode{SPIFFEID: a1}, &datastore.NodeMask{CertSerial: true, NewCertSerial: true}); err != nil {
			t.Fatal(err)
		}
	}
	ban()
	if getNode(t, c, a1).CertSerial != "1" {
		t.Fatal("a write without Poke was seen without a journal application: the cache is not being used")
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if n := getNode(t, c, a1); n.CertSerial != "" {
		t.Fatalf("after Sync: %+v, want banned", n)
	}

	// This server renews a2 and pokes: the very next GetNode sees it.
	if _, err := f.st.UpdateNode(ctx, &datastore.AttestedNode{SPIFFEID: a2, NewCertSerial: "2", NewCertNotAfter: 42},
		&datastore.NodeMask{NewCertSerial: true, NewCertNotAfter: true}); err != nil {
		t.Fatal(err)
	}
	c.Poke()
	if n := getNode(t, c, a2); n.NewCertSerial != "2" || n.NewCertNotAfter != 42 {
		t.Fatalf("after local renew: %+v, want new serial 2", n)
	}
	// ... and a delete.
	if _, err := f.st.DeleteNode(ctx, a2); err != nil {
		t.Fatal(err)
	}
	c.Poke()
	if _, err := c.GetNode(ctx, a2); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("after local delete: %v, want ErrNotFound", err)
	}
	// The poke was applied once: later lookups are memory reads again.
	cs.getNode = 0
	getNode(t, c, a1)
	getNode(t, c, a1)
	if cs.getNode != 0 {
		t.Fatalf("%d store reads after the poke was applied", cs.getNode)
	}
}

// TestAuthorizedEntryMatchesAuthorizedEntries checks AuthorizedEntry
// against AuthorizedEntries on the fixture world and on random graphs
// (cycles, shared SPIFFE IDs, aliases, expired links).
func TestAuthorizedEntryMatchesAuthorizedEntries(t *testing.T) {
	ctx := context.Background()
	check := func(t *testing.T, f *fixture, agents, entryIDs []string) {
		t.Helper()
		for _, a := range agents {
			want := make(map[string]bool)
			for _, id := range authorized(t, f.cache, a) {
				want[id] = true
			}
			for _, id := range entryIDs {
				e, err := f.cache.AuthorizedEntry(ctx, mustID(a), id)
				if err != nil {
					t.Fatal(err)
				}
				if got := e != nil; got != want[id] {
					t.Errorf("agent %s, entry %s: AuthorizedEntry says %v, AuthorizedEntries %v", a, id, got, want[id])
				}
				if e != nil && e.ID != id {
					t.Errorf("AuthorizedEntry(%s) returned %s", id, e.ID)
				}
			}
		}
	}

	t.Run("world", func(t *testing.T) {
		f := newFixture(t)
		world(t, f)
		if err := f.cache.Load(ctx); err != nil {
			t.Fatal(err)
		}
		all := []string{"direct", "alias", "viaAlias", "alias2", "viaAlias2", "grand", "great", "other",
			"expired", "expParent", "expChild", "aliasNoMatch", "viaNoMatch", "missing"}
		check(t, f, []string{td + "/spire/agent/a1", td + "/spire/agent/a2", td + "/spire/agent/unknown"}, all)
		if e, _ := f.cache.AuthorizedEntry(ctx, mustID(td+"/spire/agent/a1"), "great"); e == nil {
			t.Error("great (two levels below a1's entry) not authorized")
		}
		if e, _ := f.cache.AuthorizedEntry(ctx, mustID(td+"/spire/agent/a2"), "direct"); e != nil {
			t.Error("a1's entry authorized for a2")
		}
	})

	for seed := range uint64(8) {
		t.Run(fmt.Sprint("random", seed), func(t *testing.T) {
			f := newFixture(t)
			r := rand.New(rand.NewPCG(seed, 7))
			agents := []string{td + "/spire/agent/a0", td + "/spire/agent/a1", td + "/spire/agent/a2"}
			selPool := []string{"s:1", "s:2", "s:3"}
			pick := func() []string {
				var out []string
				for _, s := range selPool {
					if r.IntN(2) == 0 {
						out = append(out, s)
					}
				}
				return out
			}
			for _, a := range agents[:2] { // a2 has no node
				f.node(t, a, pick()...)
			}
			ids := []string{td + "/spire/server"}
			ids = append(ids, agents...)
			for i := range 6 {
				ids = append(ids, fmt.Sprintf("%s/w/%d", td, i))
			}
			var es []*datastore.Entry
			var entryIDs []string
			for i := range 40 {
				e := &datastore.Entry{
					ID:        fmt.Sprintf("e%02d", i),
					SPIFFEID:  ids[4+r.IntN(len(ids)-4)],
					ParentID:  ids[r.IntN(len(ids))],
					Selectors: sels(fmt.Sprintf("unix:uid:%d", i)),
				}
				if e.ParentID == td+"/spire/server" {
					if ss := pick(); len(ss) > 0 {
						e.Selectors = sels(ss...)
					}
				}
				if r.IntN(6) == 0 {
					e.ExpiresAt = t0.Add(-time.Second).Unix()
				}
				es = append(es, e)
				entryIDs = append(entryIDs, e.ID)
			}
			f.create(t, es...)
			if err := f.cache.Load(ctx); err != nil {
				t.Fatal(err)
			}
			check(t, f, agents, entryIDs)
		})
	}
}

// TestStoreNotifiesCache: the store tells the cache of every committed
// write, with no caller poking it: a ban or delete written to the store is
// seen by the very next GetNode (no Run, no Sync), and with Run a new entry
// wakes its agent's subscription at once (the poll is an hour). A write of
// another server (another store on the database, which does not notify
// this cache) is seen only when the journal is applied.
func TestStoreNotifiesCache(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	c := entrycache.New(entrycache.Config{Store: f.st, Clock: f.clk, PollInterval: time.Hour})
	a1, a2 := td+"/spire/agent/a1", td+"/spire/agent/a2"
	f.node(t, a1)
	f.node(t, a2)
	if err := c.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.st.UpdateNode(ctx, &datastore.AttestedNode{SPIFFEID: a1}, &datastore.NodeMask{CertSerial: true, NewCertSerial: true}); err != nil {
		t.Fatal(err)
	}
	if n := getNode(t, c, a1); !n.Banned() {
		t.Fatalf("the next GetNode after a ban: %+v, want banned", n)
	}
	if _, err := f.st.DeleteNode(ctx, a1); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetNode(ctx, a1); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("the next GetNode after a delete: %v, want ErrNotFound", err)
	}

	other := openStoreFile(t, f.path, f.clk)
	if _, err := other.UpdateNode(ctx, &datastore.AttestedNode{SPIFFEID: a2}, &datastore.NodeMask{CertSerial: true, NewCertSerial: true}); err != nil {
		t.Fatal(err)
	}
	if getNode(t, c, a2).Banned() {
		t.Fatal("another server's ban was seen before the journal was applied: the cache is not being used")
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if !getNode(t, c, a2).Banned() {
		t.Fatal("another server's ban not seen after Sync")
	}

	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	agent := mustID(td + "/spire/agent/a3")
	ch, unsub := c.Subscribe(agent)
	defer unsub()
	if _, err := c.AuthorizedEntries(ctx, agent); err != nil {
		t.Fatal(err)
	}
	drain(ch)
	f.create(t, entry("", td+"/w", agent.String(), "unix:uid:1"))
	select {
	case <-ch:
	case <-time.After(20 * time.Second):
		t.Fatal("a new entry did not wake its agent")
	}
	es, err := c.AuthorizedEntries(ctx, agent)
	if err != nil || len(es) != 1 {
		t.Fatalf("after the wake: %v, %v; want the new entry", es, err)
	}
}

func drain(ch <-chan struct{}) {
	select {
	case <-ch:
	default:
	}
}

// pageFailStore fails ListEntries from its second page on while fail is
// set.
type pageFailStore struct {
	entrycache.Store
	fail bool
}

var errPage = errors.New("injected page failure")

func (s *pageFailStore) ListEntries(ctx context.Context, f datastore.EntryFilter, p datastore.Page) ([]*datastore.Entry, string, error) {
	if s.fail && p.Token != "" {
		return nil, "", errPage
	}
	return s.Store.ListEntries(ctx, f, p)
}

// TestLoadFailsOnAPageError checks that a listing error on a later page
// (read while the previous page is indexed) fails Load with that error and
// leaves the loaded state in place.
func TestLoadFailsOnAPageError(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	agent := td + "/spire/agent/a1"
	f.node(t, agent)
	var es []*datastore.Entry
	for i := range 2500 {
		es = append(es, entry(fmt.Sprintf("e%04d", i), fmt.Sprintf("%s/w/%d", td, i), agent, "unix:uid:1"))
	}
	f.create(t, es[:1500]...)
	st := &pageFailStore{Store: f.st}
	c := entrycache.New(entrycache.Config{Store: st, Clock: f.clk})
	if err := c.Load(ctx); err != nil {
		t.Fatal(err)
	}
	f.create(t, es[1500:]...)
	st.fail = true
	if err := c.Load(ctx); !errors.Is(err, errPage) {
		t.Fatalf("Load = %v, want the page error", err)
	}
	if got := authorized(t, c, agent); len(got) != 1500 {
		t.Fatalf("after the failed load: %d entries authorized, want the 1500 loaded before", len(got))
	}
	st.fail = false
	if err := c.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if got := authorized(t, c, agent); len(got) != 2500 {
		t.Fatalf("after a good load: %d entries authorized, want 2500", len(got))
	}
}
