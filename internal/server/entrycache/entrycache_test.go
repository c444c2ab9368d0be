package entrycache_test

import (
	"context"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/datastore/sqlstore"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/server/entrycache"
)

const td = "spiffe://example.org"

var t0 = time.Unix(1_800_000_000, 0)

// openStoreFile opens the SQLite datastore at path (another server's
// store, when path is a fixture's).
func openStoreFile(t *testing.T, path string, clk clock.Clock) *sqlstore.Store {
	t.Helper()
	st, err := sqlstore.Open(context.Background(), sqlstore.Config{
		DatabaseType:     "sqlite3",
		ConnectionString: path,
		Clock:            clk,
	})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func sels(ss ...string) []selector.Selector {
	var out []selector.Selector
	for _, s := range ss {
		sel, err := selector.Parse(s)
		if err != nil {
			panic(err)
		}
		out = append(out, sel)
	}
	return out
}

func mustID(s string) spiffeid.ID { return spiffeid.RequireFromString(s) }

type fixture struct {
	st    *sqlstore.Store
	path  string // st's file
	cache *entrycache.Cache
	clk   *clock.Fake
}

func newFixture(t *testing.T) *fixture {
	clk := clock.NewFake(t0)
	path := filepath.Join(t.TempDir(), "ds.sqlite3")
	st := openStoreFile(t, path, clk)
	return &fixture{st: st, path: path, clk: clk, cache: entrycache.New(entrycache.Config{Store: st, Clock: clk})}
}

func (f *fixture) create(t *testing.T, es ...*datastore.Entry) []*datastore.Entry {
	t.Helper()
	res, err := f.st.CreateEntries(context.Background(), es)
	if err != nil {
		t.Fatalf("create entries: %v", err)
	}
	var out []*datastore.Entry
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("create entry %d: %v", i, r.Err)
		}
		out = append(out, r.Entry)
	}
	return out
}

func (f *fixture) node(t *testing.T, id string, ss ...string) {
	t.Helper()
	_, err := f.st.CreateNode(context.Background(), &datastore.AttestedNode{
		SPIFFEID: id, AttestationType: "join_token", CertSerial: "1", CertNotAfter: t0.Add(time.Hour).Unix(), Selectors: sels(ss...),
	})
	if err != nil {
		t.Fatalf("create node: %v", err)
	}
}

func entry(id, spiffeID, parent string, ss ...string) *datastore.Entry {
	return &datastore.Entry{ID: id, SPIFFEID: spiffeID, ParentID: parent, Selectors: sels(ss...)}
}

func ids(es []*datastore.Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.ID)
	}
	slices.Sort(out)
	return out
}

func authorized(t *testing.T, c *entrycache.Cache, agent string) []string {
	t.Helper()
	es, err := c.AuthorizedEntries(context.Background(), mustID(agent))
	if err != nil {
		t.Fatalf("authorized entries: %v", err)
	}
	return ids(es)
}

// world builds: agent1 (selectors a:1, b:2), agent2 (a:1).
//
//	direct:   parent agent1                       -> authorized to agent1
//	alias:    parent server, selectors a:1,b:2     (alias matching agent1 only)
//	viaAlias: parent alias SPIFFE ID               -> agent1
//	alias2:   parent server, selectors a:1         (matches both agents)
//	viaAlias2: parent alias2 SPIFFE ID             -> agent1, agent2
//	grand:    parent direct's SPIFFE ID           -> agent1
//	great:    parent grand's SPIFFE ID            -> agent1
//	other:    parent agent2                        -> agent2
//	expired:  parent agent1, expired               -> nobody
//	expParent: parent agent1, expired; child under it -> nobody
//	aliasNoMatch: parent server, selectors c:3; child -> nobody
func world(t *testing.T, f *fixture) {
	f.node(t, td+"/spire/agent/a1", "a:1", "b:2")
	f.node(t, td+"/spire/agent/a2", "a:1")
	f.create(t,
		entry("direct", td+"/w/direct", td+"/spire/agent/a1", "unix:uid:1"),
		entry("alias", td+"/alias/ab", td+"/spire/server", "a:1", "b:2"),
		entry("viaAlias", td+"/w/via-alias", td+"/alias/ab", "unix:uid:2"),
		entry("alias2", td+"/alias/a", td+"/spire/server", "a:1"),
		entry("viaAlias2", td+"/w/via-alias2", td+"/alias/a", "unix:uid:3"),
		entry("grand", td+"/w/grand", td+"/w/direct", "unix:uid:4"),
		entry("great", td+"/w/great", td+"/w/grand", "unix:uid:5"),
		entry("other", td+"/w/other", td+"/spire/agent/a2", "unix:uid:6"),
		&datastore.Entry{ID: "expired", SPIFFEID: td + "/w/expired", ParentID: td + "/spire/agent/a1", Selectors: sels("unix:uid:7"), ExpiresAt: t0.Add(-time.Second).Unix()},
		&datastore.Entry{ID: "expParent", SPIFFEID: td + "/w/exp-parent", ParentID: td + "/spire/agent/a1", Selectors: sels("unix:uid:8"), ExpiresAt: t0.Add(-time.Second).Unix()},
		entry("expChild", td+"/w/exp-child", td+"/w/exp-parent", "unix:uid:9"),
		entry("aliasNoMatch", td+"/alias/c", td+"/spire/server", "c:3"),
		entry("viaNoMatch", td+"/w/via-nomatch", td+"/alias/c", "unix:uid:10"),
	)
}

func TestAuthorizedEntries(t *testing.T) {
	f := newFixture(t)
	world(t, f)
	if _, err := f.cache.AuthorizedEntries(context.Background(), mustID(td+"/spire/agent/a1")); err == nil {
		t.Fatal("AuthorizedEntries before Load succeeded")
	}
	if err := f.cache.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := authorized(t, f.cache, td+"/spire/agent/a1"), []string{"direct", "grand", "great", "viaAlias", "viaAlias2"}; !slices.Equal(got, want) {
		t.Errorf("agent1: got %v, want %v", got, want)
	}
	if got, want := authorized(t, f.cache, td+"/spire/agent/a2"), []string{"other", "viaAlias2"}; !slices.Equal(got, want) {
		t.Errorf("agent2: got %v, want %v", got, want)
	}
	if got := authorized(t, f.cache, td+"/spire/agent/unknown"); len(got) != 0 {
		t.Errorf("unknown agent: got %v, want none", got)
	}
	// An entry expiring later is authorized until then.
	f.create(t, &datastore.Entry{ID: "later", SPIFFEID: td + "/w/later", ParentID: td + "/spire/agent/a2", Selectors: sels("unix:uid:11"), ExpiresAt: t0.Add(time.Minute).Unix()})
	if err := f.cache.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := authorized(t, f.cache, td+"/spire/agent/a2"), []string{"later", "other", "viaAlias2"}; !slices.Equal(got, want) {
		t.Errorf("agent2 before expiry: got %v, want %v", got, want)
	}
	f.clk.Add(2 * time.Minute)
	if got, want := authorized(t, f.cache, td+"/spire/agent/a2"), []string{"other", "viaAlias2"}; !slices.Equal(got, want) {
		t.Errorf("agent2 after expiry: got %v, want %v", got, want)
	}
}

func TestJournalFollowing(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	world(t, f)
	if err := f.cache.Load(ctx); err != nil {
		t.Fatal(err)
	}
	a2 := td + "/spire/agent/a2"

	// Node selectors change: agent2 gains b:2 and so the alias "alias".
	if err := f.st.SetNodeSelectors(ctx, a2, sels("a:1", "b:2")); err != nil {
		t.Fatal(err)
	}
	if err := f.cache.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := authorized(t, f.cache, a2), []string{"other", "viaAlias", "viaAlias2"}; !slices.Equal(got, want) {
		t.Errorf("after selector change: got %v, want %v", got, want)
	}

	// Update: move "other" under agent1.
	if _, err := f.st.UpdateEntry(ctx, &datastore.Entry{ID: "other", ParentID: td + "/spire/agent/a1"}, &datastore.EntryMask{ParentID: true}); err != nil {
		t.Fatal(err)
	}
	// Delete: "viaAlias2".
	if _, err := f.st.DeleteEntries(ctx, []string{"viaAlias2"}); err != nil {
		t.Fatal(err)
	}
	if err := f.cache.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := authorized(t, f.cache, a2), []string{"viaAlias"}; !slices.Equal(got, want) {
		t.Errorf("agent2 after update+delete: got %v, want %v", got, want)
	}
	if got, want := authorized(t, f.cache, td+"/spire/agent/a1"), []string{"direct", "grand", "great", "other", "viaAlias"}; !slices.Equal(got, want) {
		t.Errorf("agent1 after update+delete: got %v, want %v", got, want)
	}

	// A second cache over the same database (another HA server) sees the
	// same state through its own load + journal.
	other := entrycache.New(entrycache.Config{Store: f.st, Clock: f.clk})
	if err := other.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := authorized(t, other, a2), []string{"viaAlias"}; !slices.Equal(got, want) {
		t.Errorf("second cache: got %v, want %v", got, want)
	}

	// Node deleted: it loses its alias entries.
	if _, err := f.st.DeleteNode(ctx, a2); err != nil {
		t.Fatal(err)
	}
	if err := f.cache.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := authorized(t, f.cache, a2); len(got) != 0 {
		t.Errorf("deleted node: got %v, want none", got)
	}
}

func TestRunAppliesPokes(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFixture(t)
	world(t, f)
	// Real clock for Run's poll timer; PollInterval long so the poke is
	// what delivers the change.
	c := entrycache.New(entrycache.Config{Store: f.st, Clock: f.clk, PollInterval: time.Hour})
	agent := mustID(td + "/spire/agent/a1")
	sig, unsub := c.Subscribe(agent) // before Run, so the load's wake is not missed
	defer unsub()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	<-sig // the load wakes everyone
	if _, err := c.AuthorizedEntries(ctx, agent); err != nil {
		t.Fatal(err)
	}
	f.create(t, entry("new", td+"/w/new", td+"/spire/agent/a1", "unix:uid:99")) // the store pokes
	<-sig
	if got := authorized(t, c, agent.String()); !slices.Contains(got, "new") {
		t.Errorf("after poke: %v lacks the new entry", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

func pending(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestTargetedWakes(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	world(t, f)
	if err := f.cache.Load(ctx); err != nil {
		t.Fatal(err)
	}
	a1, a2 := mustID(td+"/spire/agent/a1"), mustID(td+"/spire/agent/a2")
	s1, u1 := f.cache.Subscribe(a1)
	defer u1()
	s2, u2 := f.cache.Subscribe(a2)
	defer u2()

	// Before a first AuthorizedEntries, any change wakes.
	f.create(t, entry("x1", td+"/w/x1", td+"/spire/agent/nobody", "unix:uid:1"))
	if err := f.cache.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if !pending(s1) || !pending(s2) {
		t.Fatal("subscribers without a computed set were not woken")
	}
	for _, a := range []spiffeid.ID{a1, a2} {
		if _, err := f.cache.AuthorizedEntries(ctx, a); err != nil {
			t.Fatal(err)
		}
	}

	steps := []struct {
		name         string
		do           func()
		want1, want2 bool
	}{
		{"unrelated entry", func() { f.create(t, entry("x2", td+"/w/x2", td+"/spire/agent/nobody", "unix:uid:2")) }, false, false},
		{"grandchild of agent1", func() { f.create(t, entry("x3", td+"/w/x3", td+"/w/great", "unix:uid:3")) }, true, false},
		{"child of shared alias", func() { f.create(t, entry("x4", td+"/w/x4", td+"/alias/a", "unix:uid:4")) }, true, true},
		{"new alias matching agent2 only", func() { f.create(t, entry("x5", td+"/alias/x5", td+"/spire/server", "a:1", "c:9")) }, false, false},
		{"new alias matching agent1", func() { f.create(t, entry("x6", td+"/alias/x6", td+"/spire/server", "b:2")) }, true, false},
		{"agent2 node selectors", func() {
			if err := f.st.SetNodeSelectors(ctx, a2.String(), sels("a:1", "c:9")); err != nil {
				t.Fatal(err)
			}
		}, false, true},
		{"delete agent2's entry", func() {
			if _, err := f.st.DeleteEntries(ctx, []string{"other"}); err != nil {
				t.Fatal(err)
			}
		}, false, true},
	}
	for _, s := range steps {
		s.do()
		if err := f.cache.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if got := pending(s1); got != s.want1 {
			t.Errorf("%s: agent1 woken = %v, want %v", s.name, got, s.want1)
		}
		if got := pending(s2); got != s.want2 {
			t.Errorf("%s: agent2 woken = %v, want %v", s.name, got, s.want2)
		}
		for _, a := range []spiffeid.ID{a1, a2} {
			if _, err := f.cache.AuthorizedEntries(ctx, a); err != nil {
				t.Fatal(err)
			}
		}
	}
	// x4 hangs under the alias both agents match.
	if got := authorized(t, f.cache, a2.String()); !slices.Contains(got, "x4") {
		t.Errorf("agent2 lacks x4: %v", got)
	}

	f.cache.BundleChanged()
	if !pending(s1) || !pending(s2) {
		t.Error("BundleChanged did not wake every subscriber")
	}
	// A bundle written to the store (e.g. by another server) is seen
	// through the bundle journal.
	if _, err := f.st.SetBundle(ctx, &datastore.Bundle{TrustDomain: "fed.org"}); err != nil {
		t.Fatal(err)
	}
	if err := f.cache.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if !pending(s1) || !pending(s2) {
		t.Error("a bundle journal event did not wake every subscriber")
	}
	if err := f.cache.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if pending(s1) || pending(s2) {
		t.Error("a Sync without changes woke subscribers")
	}
	u2()
	f.cache.BundleChanged()
	if pending(s2) {
		t.Error("unsubscribed channel was signalled")
	}
}

func TestAdminAndDownstream(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.create(t,
		&datastore.Entry{ID: "a", SPIFFEID: td + "/admin", ParentID: td + "/spire/agent/x", Selectors: sels("u:1"), Admin: true},
		&datastore.Entry{ID: "b", SPIFFEID: td + "/down", ParentID: td + "/spire/agent/x", Selectors: sels("u:2"), Downstream: true},
		&datastore.Entry{ID: "c", SPIFFEID: td + "/both", ParentID: td + "/spire/agent/x", Selectors: sels("u:3"), Admin: true},
		&datastore.Entry{ID: "d", SPIFFEID: td + "/both", ParentID: td + "/spire/agent/y", Selectors: sels("u:3"), Downstream: true},
		&datastore.Entry{ID: "e", SPIFFEID: td + "/expired-admin", ParentID: td + "/spire/agent/x", Selectors: sels("u:3"), Admin: true, ExpiresAt: t0.Add(-time.Second).Unix()},
	)
	if err := f.cache.Load(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id          string
		admin, down bool
	}{
		{"/admin", true, false}, {"/down", false, true}, {"/both", true, true}, {"/expired-admin", false, false}, {"/none", false, false},
	} {
		a, d, err := f.cache.AdminAndDownstream(ctx, mustID(td+tc.id))
		if err != nil {
			t.Fatal(err)
		}
		if a != tc.admin || d != tc.down {
			t.Errorf("%s: admin=%v downstream=%v, want %v %v", tc.id, a, d, tc.admin, tc.down)
		}
	}
}

func BenchmarkAuthorizedEntries(b *testing.B) {
	ctx := context.Background()
	clk := clock.NewFake(t0)
	st, err := sqlstore.Open(ctx, sqlstore.Config{DatabaseType: "sqlite3", ConnectionString: filepath.Join(b.TempDir(), "ds.sqlite3"), Clock: clk})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	// 1000 agents with 10 entries each, plus 10 alias entries for all.
	var es []*datastore.Entry
	for a := range 1000 {
		agent := td + "/spire/agent/" + itoa(a)
		if _, err := st.CreateNode(ctx, &datastore.AttestedNode{SPIFFEID: agent, AttestationType: "x", CertSerial: "1", Selectors: sels("cluster:c1", "node:"+itoa(a))}); err != nil {
			b.Fatal(err)
		}
		for i := range 10 {
			es = append(es, entry("", td+"/w/"+itoa(a)+"/"+itoa(i), agent, "u:"+itoa(i)))
		}
	}
	for i := range 10 {
		es = append(es, entry("", td+"/alias/"+itoa(i), td+"/spire/server", "cluster:c1"))
		es = append(es, entry("", td+"/w/shared/"+itoa(i), td+"/alias/"+itoa(i), "u:shared"))
	}
	if _, err := st.CreateEntries(ctx, es); err != nil {
		b.Fatal(err)
	}
	c := entrycache.New(entrycache.Config{Store: st, Clock: clk})
	if err := c.Load(ctx); err != nil {
		b.Fatal(err)
	}
	agent := mustID(td + "/spire/agent/500")
	b.ResetTimer()
	for b.Loop() {
		es, err := c.AuthorizedEntries(ctx, agent)
		if err != nil || len(es) != 20 {
			b.Fatalf("got %d entries, err %v", len(es), err)
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// TestLargeIndexSets exercises index sets larger than the small-set form:
// an agent parenting 40 entries, 20 alias entries sharing a selector and
// 20 entries sharing one SPIFFE ID (found by AuthorizedEntry's walk back
// and by AdminAndDownstream), loaded and then shrunk through the journal.
func TestLargeIndexSets(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	a1 := td + "/spire/agent/a1"
	f.node(t, a1, "a:1")
	var es []*datastore.Entry
	var direct []string
	for i := range 40 {
		id := "d" + strconv.Itoa(i)
		es = append(es, entry(id, td+"/w/d"+strconv.Itoa(i), a1, "unix:uid:"+strconv.Itoa(i)))
		direct = append(direct, id)
	}
	for i := range 20 {
		es = append(es, entry("alias"+strconv.Itoa(i), td+"/alias/"+strconv.Itoa(i), td+"/spire/server", "a:1", "n:"+strconv.Itoa(i)))
		es = append(es, entry("shared"+strconv.Itoa(i), td+"/w/shared", td+"/spire/agent/a2", "unix:uid:"+strconv.Itoa(i)))
	}
	es = append(es, &datastore.Entry{ID: "admin", SPIFFEID: td + "/w/shared", ParentID: td + "/alias/one", Selectors: sels("unix:uid:99"), Admin: true})
	es = append(es, entry("one", td+"/alias/one", td+"/spire/server", "a:1"))
	f.create(t, es...)
	if err := f.cache.Load(ctx); err != nil {
		t.Fatal(err)
	}
	want := slices.Sorted(slices.Values(append(slices.Clone(direct), "admin")))
	if got := authorized(t, f.cache, a1); !slices.Equal(got, want) {
		t.Fatalf("loaded: got %v, want %v", got, want)
	}
	if e, err := f.cache.AuthorizedEntry(ctx, mustID(a1), "admin"); err != nil || e == nil {
		t.Fatalf("AuthorizedEntry(admin) = %v, %v", e, err)
	}
	if admin, _, err := f.cache.AdminAndDownstream(ctx, mustID(td+"/w/shared")); err != nil || !admin {
		t.Fatalf("AdminAndDownstream = %v, %v", admin, err)
	}
	// Shrink every set below the small-set form, and move one entry.
	var del []string
	for i := range 36 {
		del = append(del, "d"+strconv.Itoa(i))
	}
	for i := range 19 {
		del = append(del, "shared"+strconv.Itoa(i))
	}
	del = append(del, "admin")
	if _, err := f.st.DeleteEntries(ctx, del); err != nil {
		t.Fatal(err)
	}
	if _, err := f.st.UpdateEntry(ctx, &datastore.Entry{ID: "shared19", ParentID: a1}, &datastore.EntryMask{ParentID: true}); err != nil {
		t.Fatal(err)
	}
	if err := f.cache.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := authorized(t, f.cache, a1), []string{"d36", "d37", "d38", "d39", "shared19"}; !slices.Equal(got, want) {
		t.Fatalf("after deletes: got %v, want %v", got, want)
	}
	if admin, _, err := f.cache.AdminAndDownstream(ctx, mustID(td+"/w/shared")); err != nil || admin {
		t.Fatalf("AdminAndDownstream after deleting the admin entry = %v, %v", admin, err)
	}
	if e, err := f.cache.AuthorizedEntry(ctx, mustID(a1), "d0"); err != nil || e != nil {
		t.Fatalf("AuthorizedEntry(deleted d0) = %v, %v", e, err)
	}
}
