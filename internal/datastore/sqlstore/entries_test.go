package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

func assertEntryEqual(t *testing.T, got, want *datastore.Entry) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("entry mismatch\n got: %+v\nwant: %+v", got, want)
	}
}

func (x suite) TestEntryCRUD(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()

	in := &datastore.Entry{
		SPIFFEID:      "spiffe://example.org/web",
		ParentID:      "spiffe://example.org/node",
		Selectors:     sels("unix:uid:1000", "k8s:ns:default", "unix:uid:1000", "k8s:ns:default"),
		X509SVIDTTL:   3600,
		JWTSVIDTTL:    300,
		DNSNames:      []string{"web.example.org", "alt.example.org"},
		FederatesWith: []string{"b.org", "a.org", "b.org"},
		Admin:         true,
		Downstream:    true,
		Hint:          "web",
		StoreSVID:     true,
		ExpiresAt:     t0.Add(time.Hour).Unix(),
	}
	orig := *in
	addBundles(t, s, "a.org", "b.org", "c.org")
	created := mustCreate(t, s, in)[0]
	if !reflect.DeepEqual(*in, orig) {
		t.Fatal("CreateEntries modified its input")
	}
	if created.ID == "" || created.CreatedAt != t0.Unix() || created.RevisionNumber != 0 {
		t.Fatalf("created entry: %+v", created)
	}
	if want := sels("k8s:ns:default", "unix:uid:1000"); !reflect.DeepEqual(created.Selectors, want) {
		t.Fatalf("selectors = %v, want sorted and de-duplicated %v", created.Selectors, want)
	}
	if want := []string{"a.org", "b.org"}; !reflect.DeepEqual(created.FederatesWith, want) {
		t.Fatalf("federates with = %v, want %v", created.FederatesWith, want)
	}
	got, err := s.GetEntry(ctx, created.ID)
	if err != nil {
		t.Fatal(err)
	}
	assertEntryEqual(t, got, created)
	if got.DNSNames[0] != "web.example.org" {
		t.Fatalf("DNS name order not kept: %v", got.DNSNames)
	}

	_, err = s.GetEntry(ctx, "nope")
	wantErr(t, err, datastore.ErrNotFound)

	// Masked update: only the hint and TTL change; revision bumps each time.
	f.clk.Add(time.Minute)
	upd, err := s.UpdateEntry(ctx, &datastore.Entry{ID: created.ID, Hint: "new", X509SVIDTTL: 60, SPIFFEID: "ignored"},
		&datastore.EntryMask{Hint: true, X509SVIDTTL: true})
	if err != nil {
		t.Fatal(err)
	}
	want := *created
	want.Hint, want.X509SVIDTTL, want.RevisionNumber = "new", 60, 1
	assertEntryEqual(t, upd, &want)
	got, _ = s.GetEntry(ctx, created.ID)
	assertEntryEqual(t, got, &want)

	// Full update (nil mask) replaces children.
	full := &datastore.Entry{ID: created.ID, SPIFFEID: "spiffe://example.org/api", ParentID: "spiffe://example.org/node2",
		Selectors: sels("docker:label:app:api"), DNSNames: nil, FederatesWith: []string{"c.org"}}
	upd, err = s.UpdateEntry(ctx, full, nil)
	if err != nil {
		t.Fatal(err)
	}
	want2 := datastore.Entry{ID: created.ID, SPIFFEID: full.SPIFFEID, ParentID: full.ParentID, Selectors: full.Selectors,
		FederatesWith: []string{"c.org"}, CreatedAt: created.CreatedAt, RevisionNumber: 2}
	assertEntryEqual(t, upd, &want2)
	got, _ = s.GetEntry(ctx, created.ID)
	assertEntryEqual(t, got, &want2)

	_, err = s.UpdateEntry(ctx, &datastore.Entry{ID: "missing", SPIFFEID: "spiffe://x/y", ParentID: "spiffe://x/z", Selectors: sels("a:b")}, nil)
	wantErr(t, err, datastore.ErrNotFound)
	if _, err := s.UpdateEntry(ctx, &datastore.Entry{ID: created.ID}, &datastore.EntryMask{Selectors: true}); err == nil {
		t.Fatal("update to an empty selector set succeeded")
	}

	errs, err := s.DeleteEntries(ctx, []string{created.ID, "missing", created.ID})
	if err != nil {
		t.Fatal(err)
	}
	if errs[0] != nil {
		t.Fatalf("delete: %v", errs[0])
	}
	wantErr(t, errs[1], datastore.ErrNotFound)
	wantErr(t, errs[2], datastore.ErrNotFound)
	_, err = s.GetEntry(ctx, created.ID)
	wantErr(t, err, datastore.ErrNotFound)

	// Child rows went with the entry (foreign key cascade).
	for _, table := range []string{"entry_selectors", "entry_dns_names", "entry_federates_with"} {
		var n int
		if err := s.r.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("%s has %d orphan rows", table, n)
		}
	}
}

func (x suite) TestCreateEntriesDuplicates(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	base := func() *datastore.Entry {
		return &datastore.Entry{SPIFFEID: "spiffe://td/a", ParentID: "spiffe://td/p", Selectors: sels("x:1", "y:2")}
	}
	first := mustCreate(t, s, base())[0]

	reordered := base()
	reordered.Selectors = sels("y:2", "x:1", "x:1") // same set
	otherParent := base()
	otherParent.ParentID = "spiffe://td/q"
	otherSels := base()
	otherSels.Selectors = sels("x:1")
	sameID := &datastore.Entry{ID: first.ID, SPIFFEID: "spiffe://td/zzz", ParentID: "spiffe://td/p", Selectors: sels("z:1")}
	invalid := &datastore.Entry{SPIFFEID: "spiffe://td/a", ParentID: "spiffe://td/p"} // no selectors
	inBatchA := &datastore.Entry{SPIFFEID: "spiffe://td/b", ParentID: "spiffe://td/p", Selectors: sels("k:v")}
	inBatchB := &datastore.Entry{SPIFFEID: "spiffe://td/b", ParentID: "spiffe://td/p", Selectors: sels("k:v")}
	customID := &datastore.Entry{ID: "my-id", SPIFFEID: "spiffe://td/c", ParentID: "spiffe://td/p", Selectors: sels("k:v")}
	customIDDup := &datastore.Entry{ID: "my-id", SPIFFEID: "spiffe://td/d", ParentID: "spiffe://td/p", Selectors: sels("k:v")}

	res, err := s.CreateEntries(ctx, []*datastore.Entry{reordered, otherParent, otherSels, sameID, invalid, inBatchA, inBatchB, customID, customIDDup, nil})
	if err != nil {
		t.Fatal(err)
	}
	wantErr(t, res[0].Err, datastore.ErrAlreadyExists)
	for _, i := range []int{1, 2, 5, 7} {
		if res[i].Err != nil || res[i].Entry == nil {
			t.Fatalf("result %d: %v", i, res[i].Err)
		}
	}
	wantErr(t, res[3].Err, datastore.ErrAlreadyExists)
	if res[4].Err == nil || res[9].Err == nil {
		t.Fatal("invalid entries accepted")
	}
	wantErr(t, res[6].Err, datastore.ErrAlreadyExists)
	wantErr(t, res[8].Err, datastore.ErrAlreadyExists)
	if res[7].Entry.ID != "my-id" {
		t.Fatalf("custom ID not kept: %q", res[7].Entry.ID)
	}
	if n, _ := s.CountEntries(ctx, datastore.EntryFilter{}); n != 5 {
		t.Fatalf("count = %d, want 5", n)
	}

	// Update that would duplicate another entry.
	_, err = s.UpdateEntry(ctx, &datastore.Entry{ID: res[2].Entry.ID, Selectors: sels("y:2", "x:1")}, &datastore.EntryMask{Selectors: true})
	wantErr(t, err, datastore.ErrAlreadyExists)
	got, _ := s.GetEntry(ctx, res[2].Entry.ID)
	if got.RevisionNumber != 0 || len(got.Selectors) != 1 {
		t.Fatalf("failed update changed the entry: %+v", got)
	}
	// Updating an entry to itself is not a duplicate.
	if _, err := s.UpdateEntry(ctx, first, nil); err != nil {
		t.Fatalf("self update: %v", err)
	}
	// After a delete the tuple is free again.
	if errs, err := s.DeleteEntries(ctx, []string{first.ID}); err != nil || errs[0] != nil {
		t.Fatal(err, errs)
	}
	mustCreate(t, s, base())
}

func (x suite) TestEntryEventsAndPrune(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	if id, err := s.LastEntryEventID(ctx); err != nil || id != 0 {
		t.Fatalf("LastEntryEventID on empty store = %d, %v", id, err)
	}
	es := mustCreate(t, s,
		&datastore.Entry{SPIFFEID: "spiffe://td/1", ParentID: "spiffe://td/p", Selectors: sels("a:1"), ExpiresAt: t0.Unix() + 10},
		&datastore.Entry{SPIFFEID: "spiffe://td/2", ParentID: "spiffe://td/p", Selectors: sels("a:2"), ExpiresAt: t0.Unix() + 20},
		&datastore.Entry{SPIFFEID: "spiffe://td/3", ParentID: "spiffe://td/p", Selectors: sels("a:3")},
	)
	if _, err := s.UpdateEntry(ctx, &datastore.Entry{ID: es[2].ID, Hint: "x"}, &datastore.EntryMask{Hint: true}); err != nil {
		t.Fatal(err)
	}
	// A failed update writes no event.
	if _, err := s.UpdateEntry(ctx, &datastore.Entry{ID: "missing"}, &datastore.EntryMask{Hint: true}); err == nil {
		t.Fatal("update of a missing entry succeeded")
	}
	n, err := s.PruneEntries(ctx, time.Unix(t0.Unix()+15, 0))
	if err != nil || n != 1 {
		t.Fatalf("PruneEntries = %d, %v; want 1", n, err)
	}
	// Exactly at the expiry second is not "before".
	if n, _ := s.PruneEntries(ctx, time.Unix(t0.Unix()+20, 0)); n != 0 {
		t.Fatalf("pruned an entry expiring exactly at t")
	}
	if n, _ := s.PruneEntries(ctx, time.Unix(t0.Unix()+20, 1)); n != 1 {
		t.Fatalf("did not prune an entry that expired just before t")
	}
	if errs, err := s.DeleteEntries(ctx, []string{es[2].ID}); err != nil || errs[0] != nil {
		t.Fatal(err, errs)
	}

	evs, err := s.ListEntryEvents(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	type ev struct {
		id   string
		kind datastore.EntryEventKind
	}
	var got []ev
	for i, e := range evs {
		if i > 0 && e.ID <= evs[i-1].ID {
			t.Fatalf("event IDs not increasing: %v", evs)
		}
		got = append(got, ev{e.EntryID, e.Kind})
	}
	want := []ev{
		{es[0].ID, datastore.EntryCreated}, {es[1].ID, datastore.EntryCreated}, {es[2].ID, datastore.EntryCreated},
		{es[2].ID, datastore.EntryUpdated}, {es[0].ID, datastore.EntryDeleted}, {es[1].ID, datastore.EntryDeleted},
		{es[2].ID, datastore.EntryDeleted},
	}
	// The order of the events of one batch is unspecified (the store
	// inserts a batch in duplicate-key order).
	byID := func(a, b ev) int { return strings.Compare(a.id, b.id) }
	if len(got) >= 3 {
		slices.SortFunc(got[:3], byID)
	}
	slices.SortFunc(want[:3], byID)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("events\n got %v\nwant %v", got, want)
	}
	last, _ := s.LastEntryEventID(ctx)
	if last != evs[len(evs)-1].ID {
		t.Fatalf("LastEntryEventID = %d, want %d", last, evs[len(evs)-1].ID)
	}
	page, _ := s.ListEntryEvents(ctx, evs[1].ID, 2)
	if len(page) != 2 || page[0].ID != evs[2].ID || page[1].ID != evs[3].ID {
		t.Fatalf("ListEntryEvents(after, 2) = %v", page)
	}

	// Pruning old events keeps IDs monotonic for later writes.
	f.clk.Add(time.Hour)
	if n, err := s.PruneEvents(ctx, f.clk.Now()); err != nil || n != len(evs) {
		t.Fatalf("PruneEvents = %d, %v", n, err)
	}
	mustCreate(t, s, &datastore.Entry{SPIFFEID: "spiffe://td/4", ParentID: "spiffe://td/p", Selectors: sels("a:4")})
	after, _ := s.ListEntryEvents(ctx, 0, 0)
	if len(after) != 1 || after[0].ID <= last {
		t.Fatalf("event after prune: %v (last was %d)", after, last)
	}
}

// The filter fixture: five entries with known selector and trust domain sets.
func filterFixture(t *testing.T, s *Store) {
	t.Helper()
	mk := func(id string, ss []string, fw []string) *datastore.Entry {
		return &datastore.Entry{ID: id, SPIFFEID: "spiffe://td/" + id, ParentID: "spiffe://td/p", Selectors: sels(ss...), FederatesWith: fw}
	}
	e1 := mk("e1", []string{"a:1"}, []string{"td1"})
	e1.Hint = "h"
	e2 := mk("e2", []string{"a:1", "b:2"}, []string{"td1", "td2"})
	e3 := mk("e3", []string{"a:1", "b:2", "c:3"}, nil)
	e3.Downstream = true
	e4 := mk("e4", []string{"b:2"}, []string{"td2"})
	e5 := mk("e5", []string{"d:4"}, []string{"td3"})
	e5.ParentID = "spiffe://td/other"
	addBundles(t, s, "td1", "td2", "td3")
	mustCreate(t, s, e1, e2, e3, e4, e5)
}

func (x suite) TestListEntriesFilters(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	filterFixture(t, s)
	ab := sels("b:2", "a:1")
	tds := []string{"td2", "td1"}
	cases := []struct {
		name string
		f    datastore.EntryFilter
		want []string
	}{
		{"none", datastore.EntryFilter{}, []string{"e1", "e2", "e3", "e4", "e5"}},
		{"spiffe id", datastore.EntryFilter{BySPIFFEID: "spiffe://td/e3"}, []string{"e3"}},
		{"parent", datastore.EntryFilter{ByParentID: "spiffe://td/other"}, []string{"e5"}},
		{"hint", datastore.EntryFilter{ByHint: ptr("h")}, []string{"e1"}},
		{"empty hint", datastore.EntryFilter{ByHint: ptr("")}, []string{"e2", "e3", "e4", "e5"}},
		{"downstream", datastore.EntryFilter{ByDownstream: ptr(true)}, []string{"e3"}},
		{"not downstream", datastore.EntryFilter{ByDownstream: ptr(false)}, []string{"e1", "e2", "e4", "e5"}},
		{"sel exact", datastore.EntryFilter{BySelectors: ab, SelectorMatch: datastore.MatchExact}, []string{"e2"}},
		{"sel subset", datastore.EntryFilter{BySelectors: ab, SelectorMatch: datastore.MatchSubset}, []string{"e1", "e2", "e4"}},
		{"sel superset", datastore.EntryFilter{BySelectors: ab, SelectorMatch: datastore.MatchSuperset}, []string{"e2", "e3"}},
		{"sel any", datastore.EntryFilter{BySelectors: ab, SelectorMatch: datastore.MatchAny}, []string{"e1", "e2", "e3", "e4"}},
		{"sel exact dup input", datastore.EntryFilter{BySelectors: sels("a:1", "a:1"), SelectorMatch: datastore.MatchExact}, []string{"e1"}},
		{"sel superset none", datastore.EntryFilter{BySelectors: sels("a:1", "d:4"), SelectorMatch: datastore.MatchSuperset}, nil},
		{"fed exact", datastore.EntryFilter{ByFederatesWith: tds, FederatesMatch: datastore.MatchExact}, []string{"e2"}},
		{"fed subset", datastore.EntryFilter{ByFederatesWith: tds, FederatesMatch: datastore.MatchSubset}, []string{"e1", "e2", "e4"}},
		{"fed superset", datastore.EntryFilter{ByFederatesWith: tds, FederatesMatch: datastore.MatchSuperset}, []string{"e2"}},
		{"fed any", datastore.EntryFilter{ByFederatesWith: tds, FederatesMatch: datastore.MatchAny}, []string{"e1", "e2", "e4"}},
		{"combined", datastore.EntryFilter{BySelectors: sels("a:1"), SelectorMatch: datastore.MatchAny,
			ByFederatesWith: []string{"td2"}, FederatesMatch: datastore.MatchAny}, []string{"e2"}},
		{"combined parent", datastore.EntryFilter{ByParentID: "spiffe://td/p", BySelectors: sels("d:4"), SelectorMatch: datastore.MatchAny}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, next, err := s.ListEntries(ctx, c.f, datastore.Page{})
			if err != nil {
				t.Fatal(err)
			}
			if next != "" {
				t.Fatalf("next token %q without paging", next)
			}
			if ids := entryIDs(got); !slices.Equal(ids, c.want) && !(len(ids) == 0 && len(c.want) == 0) {
				t.Fatalf("got %v, want %v", ids, c.want)
			}
			n, err := s.CountEntries(ctx, c.f)
			if err != nil {
				t.Fatal(err)
			}
			if n != len(c.want) {
				t.Fatalf("count = %d, want %d", n, len(c.want))
			}
		})
	}
	if _, _, err := s.ListEntries(ctx, datastore.EntryFilter{BySelectors: ab, SelectorMatch: 42}, datastore.Page{}); err == nil {
		t.Fatal("unknown match mode accepted")
	}
}

func (x suite) TestListEntriesPagination(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	var in []*datastore.Entry
	for i := range 23 {
		in = append(in, &datastore.Entry{SPIFFEID: fmt.Sprintf("spiffe://td/w%d", i), ParentID: "spiffe://td/p",
			Selectors: sels(fmt.Sprintf("n:%d", i%3))})
	}
	mustCreate(t, s, in...)
	all, _, err := s.ListEntries(ctx, datastore.EntryFilter{}, datastore.Page{})
	if err != nil || len(all) != 23 {
		t.Fatalf("list all: %d, %v", len(all), err)
	}
	for _, size := range []int{1, 5, 22, 23, 100} {
		var got []*datastore.Entry
		tok := ""
		pages := 0
		for {
			page, next, err := s.ListEntries(ctx, datastore.EntryFilter{}, datastore.Page{Size: size, Token: tok})
			if err != nil {
				t.Fatal(err)
			}
			if len(page) > size {
				t.Fatalf("page of %d > size %d", len(page), size)
			}
			got = append(got, page...)
			pages++
			if next == "" {
				break
			}
			tok = next
		}
		if !reflect.DeepEqual(got, all) {
			t.Fatalf("size %d: pages do not add up to the full list (%d vs %d)", size, len(got), len(all))
		}
		if wantPages := (23 + size - 1) / size; pages != wantPages {
			t.Fatalf("size %d: %d pages, want %d (empty next token on the last page)", size, pages, wantPages)
		}
	}
	// Paging with a filter.
	f0 := datastore.EntryFilter{BySelectors: sels("n:0"), SelectorMatch: datastore.MatchExact}
	p1, next, _ := s.ListEntries(ctx, f0, datastore.Page{Size: 5})
	p2, next2, _ := s.ListEntries(ctx, f0, datastore.Page{Size: 5, Token: next})
	if len(p1) != 5 || len(p2) != 3 || next2 != "" {
		t.Fatalf("filtered pages: %d, %d, next %q", len(p1), len(p2), next2)
	}
	_, _, err = s.ListEntries(ctx, datastore.EntryFilter{}, datastore.Page{Size: 5, Token: "!!not base64!!"})
	wantErr(t, err, ErrInvalidPage)
	_, _, err = s.ListEntries(ctx, datastore.EntryFilter{}, datastore.Page{Size: -1})
	wantErr(t, err, ErrInvalidPage)
}

// TestEntryFiltersAgainstReference compares every filter mode against a
// direct Go evaluation over random data.
func (x suite) TestEntryFiltersAgainstReference(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	universe := sels("u:1", "u:2", "u:3", "g:1", "g:2", "k:x")
	tdUniverse := []string{"a.org", "b.org", "c.org", "d.org"}
	pick := func(min int) []selector.Selector {
		var out []selector.Selector
		for len(out) < min || rng.IntN(2) == 0 {
			out = append(out, universe[rng.IntN(len(universe))])
			if len(out) > 4 {
				break
			}
		}
		return out
	}
	pickTD := func() []string {
		var out []string
		for rng.IntN(3) != 0 && len(out) < 4 {
			out = append(out, tdUniverse[rng.IntN(len(tdUniverse))])
		}
		return out
	}
	addBundles(t, s, tdUniverse...)
	var in []*datastore.Entry
	for i := range 150 {
		in = append(in, &datastore.Entry{SPIFFEID: fmt.Sprintf("spiffe://td/%d", i), ParentID: "spiffe://td/p",
			Selectors: pick(1), FederatesWith: pickTD()})
	}
	res, err := s.CreateEntries(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	var stored []*datastore.Entry
	for _, r := range res {
		if r.Err == nil {
			stored = append(stored, r.Entry)
		}
	}
	matchSet := func(have, given []string, mode datastore.SelectorMatch) bool {
		h := map[string]bool{}
		for _, v := range have {
			h[v] = true
		}
		g := map[string]bool{}
		for _, v := range given {
			g[v] = true
		}
		inter := 0
		for v := range h {
			if g[v] {
				inter++
			}
		}
		switch mode {
		case datastore.MatchExact:
			return inter > 0 && inter == len(h) && inter == len(g)
		case datastore.MatchSubset:
			return inter > 0 && inter == len(h)
		case datastore.MatchSuperset:
			return inter > 0 && inter == len(g)
		default:
			return inter > 0
		}
	}
	strs := func(ss []selector.Selector) []string {
		var out []string
		for _, s := range ss {
			out = append(out, s.String())
		}
		return out
	}
	nonEmpty := 0
	for i := range 200 {
		flt := datastore.EntryFilter{SelectorMatch: datastore.SelectorMatch(rng.IntN(4)), FederatesMatch: datastore.SelectorMatch(rng.IntN(4))}
		if rng.IntN(4) != 0 {
			flt.BySelectors = pick(1)
		}
		if rng.IntN(3) == 0 {
			flt.ByFederatesWith = pickTD()
		}
		var want []string
		for _, e := range stored {
			if len(flt.BySelectors) > 0 && !matchSet(strs(e.Selectors), strs(flt.BySelectors), flt.SelectorMatch) {
				continue
			}
			if len(flt.ByFederatesWith) > 0 && !matchSet(e.FederatesWith, flt.ByFederatesWith, flt.FederatesMatch) {
				continue
			}
			want = append(want, e.ID)
		}
		slices.Sort(want)
		if len(want) > 0 && len(want) < len(stored) {
			nonEmpty++
		}
		got, _, err := s.ListEntries(ctx, flt, datastore.Page{})
		if err != nil {
			t.Fatal(err)
		}
		if ids := entryIDs(got); !slices.Equal(ids, want) && !(len(ids) == 0 && len(want) == 0) {
			t.Fatalf("filter %d %+v: got %d entries, want %d", i, flt, len(ids), len(want))
		}
		n, _ := s.CountEntries(ctx, flt)
		if n != len(want) {
			t.Fatalf("filter %d: count %d, want %d", i, n, len(want))
		}
	}
	if nonEmpty < 50 {
		t.Fatalf("only %d of 200 random filters selected a proper non-empty subset; the test data is too weak", nonEmpty)
	}
}

func (x suite) TestConcurrentWritesAndReads(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	// A second Store on the same file stands in for a second process.
	other := f.open(t)
	const workers, perWorker = 8, 25
	errc := make(chan error, 2*workers)
	for w := range workers {
		st := s
		if w%2 == 1 {
			st = other
		}
		go func() {
			for i := range perWorker {
				e := &datastore.Entry{SPIFFEID: fmt.Sprintf("spiffe://td/%d/%d", w, i), ParentID: "spiffe://td/p", Selectors: sels("w:x")}
				if _, err := st.CreateEntries(ctx, []*datastore.Entry{e}); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
		go func() {
			for range perWorker {
				if _, _, err := st.ListEntries(ctx, datastore.EntryFilter{BySelectors: sels("w:x"), SelectorMatch: datastore.MatchAny}, datastore.Page{Size: 10}); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	for range 2 * workers {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := s.CountEntries(ctx, datastore.EntryFilter{}); n != workers*perWorker {
		t.Fatalf("count = %d, want %d", n, workers*perWorker)
	}
}

// TestLargeBatch crosses the IN-list chunk size in duplicate detection and
// child-row loading.
func (x suite) TestLargeBatch(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	const n = 2*maxInArgs + 100
	var in []*datastore.Entry
	for i := range n {
		in = append(in, &datastore.Entry{SPIFFEID: fmt.Sprintf("spiffe://td/w%d", i), ParentID: "spiffe://td/p",
			Selectors: sels(fmt.Sprintf("i:%d", i), "all:yes"), DNSNames: []string{fmt.Sprintf("w%d.example", i)}})
	}
	in = append(in, &datastore.Entry{SPIFFEID: "spiffe://td/w3", ParentID: "spiffe://td/p", Selectors: sels("all:yes", "i:3")})
	res, err := s.CreateEntries(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res[:n] {
		if r.Err != nil {
			t.Fatalf("entry %d: %v", i, r.Err)
		}
	}
	wantErr(t, res[n].Err, datastore.ErrAlreadyExists)
	// A second batch duplicating a stored entry beyond the first chunk.
	res, err = s.CreateEntries(ctx, []*datastore.Entry{{SPIFFEID: fmt.Sprintf("spiffe://td/w%d", n-1), ParentID: "spiffe://td/p",
		Selectors: sels(fmt.Sprintf("i:%d", n-1), "all:yes")}})
	if err != nil {
		t.Fatal(err)
	}
	wantErr(t, res[0].Err, datastore.ErrAlreadyExists)

	all, _, err := s.ListEntries(ctx, datastore.EntryFilter{BySelectors: sels("all:yes"), SelectorMatch: datastore.MatchSuperset}, datastore.Page{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != n {
		t.Fatalf("listed %d entries, want %d", len(all), n)
	}
	for _, e := range all {
		if len(e.Selectors) != 2 || len(e.DNSNames) != 1 {
			t.Fatalf("entry %s loaded with %d selectors, %d DNS names", e.SPIFFEID, len(e.Selectors), len(e.DNSNames))
		}
	}
}

func (x suite) TestGetEntries(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	// More than one IN-list chunk.
	in := make([]*datastore.Entry, maxInArgs+20)
	for i := range in {
		in[i] = &datastore.Entry{SPIFFEID: fmt.Sprintf("spiffe://td/w/%d", i), ParentID: "spiffe://td/p",
			Selectors: sels(fmt.Sprintf("unix:uid:%d", i), "unix:gid:0"), DNSNames: []string{fmt.Sprintf("w%d.example", i)}}
	}
	created := mustCreate(t, s, in...)
	ids := []string{"missing"}
	for _, e := range created {
		ids = append(ids, e.ID)
	}
	got, err := s.GetEntries(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(created) {
		t.Fatalf("got %d entries, want %d", len(got), len(created))
	}
	if _, ok := got["missing"]; ok {
		t.Error("a missing ID is in the result")
	}
	for _, e := range created {
		one, err := s.GetEntry(ctx, e.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got[e.ID], one) {
			t.Fatalf("GetEntries and GetEntry disagree on %s:\n%+v\n%+v", e.ID, got[e.ID], one)
		}
	}
	if got, err := s.GetEntries(ctx, nil); err != nil || len(got) != 0 {
		t.Errorf("GetEntries(nil) = %v, %v", got, err)
	}
}

// TestEntriesNeedFederatedBundles: an entry may federate only with trust
// domains that have a bundle; the check is part of the write transaction.
func (x suite) TestEntriesNeedFederatedBundles(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	addBundles(t, s, "a.org")
	mk := func(id string, fed ...string) *datastore.Entry {
		return &datastore.Entry{ID: id, SPIFFEID: "spiffe://td/" + id, ParentID: "spiffe://td/p", Selectors: sels("u:1"), FederatesWith: fed}
	}
	res, err := s.CreateEntries(ctx, []*datastore.Entry{mk("ok", "a.org"), mk("bad", "a.org", "b.org"), mk("plain")})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err != nil || res[2].Err != nil {
		t.Fatalf("entries with bundles / without federation: %v, %v", res[0].Err, res[2].Err)
	}
	var nb *datastore.NoFederatedBundleError
	if !errors.Is(res[1].Err, datastore.ErrNoFederatedBundle) || !errors.As(res[1].Err, &nb) || nb.TrustDomain != "b.org" {
		t.Fatalf("entry federating with b.org (no bundle): %v", res[1].Err)
	}
	if _, err := s.GetEntry(ctx, "bad"); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("refused entry was stored: %v", err)
	}

	before, err := s.GetEntry(ctx, "plain")
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.UpdateEntry(ctx, &datastore.Entry{ID: "plain", FederatesWith: []string{"c.org"}}, &datastore.EntryMask{FederatesWith: true})
	if !errors.Is(err, datastore.ErrNoFederatedBundle) || !errors.As(err, &nb) || nb.TrustDomain != "c.org" {
		t.Fatalf("update to federate with c.org (no bundle): %v", err)
	}
	after, err := s.GetEntry(ctx, "plain")
	if err != nil || !reflect.DeepEqual(before, after) {
		t.Fatalf("refused update changed the entry: %+v -> %+v (%v)", before, after, err)
	}
	addBundles(t, s, "c.org")
	if _, err := s.UpdateEntry(ctx, &datastore.Entry{ID: "plain", FederatesWith: []string{"c.org"}}, &datastore.EntryMask{FederatesWith: true}); err != nil {
		t.Fatalf("update once the bundle exists: %v", err)
	}
}

// TestDeleteBundleInUse: a bundle an entry federates with is not deleted
// (the check and the delete are one transaction, so no entry is left
// federating with a missing bundle by a concurrent create).
func (x suite) TestDeleteBundleInUse(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	addBundles(t, s, "a.org")
	mustCreate(t, s, &datastore.Entry{ID: "e", SPIFFEID: "spiffe://td/e", ParentID: "spiffe://td/p", Selectors: sels("u:1"), FederatesWith: []string{"a.org"}})
	if err := s.DeleteBundle(ctx, "a.org"); !errors.Is(err, datastore.ErrBundleInUse) {
		t.Fatalf("DeleteBundle with a federated entry: %v, want ErrBundleInUse", err)
	}
	if _, err := s.GetBundle(ctx, "a.org"); err != nil {
		t.Fatalf("refused delete removed the bundle: %v", err)
	}
	if _, err := s.UpdateEntry(ctx, &datastore.Entry{ID: "e"}, &datastore.EntryMask{FederatesWith: true}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteBundle(ctx, "a.org"); err != nil {
		t.Fatalf("DeleteBundle once no entry federates with it: %v", err)
	}
}

// TestListPagesCarryChildren checks that every entry and node of an
// unfiltered, paged listing (whose child rows are read by ID span) has
// exactly the selectors, DNS names and trust domains a read by ID gives
// it, for page boundaries falling anywhere, with node selectors set for
// SPIFFE IDs that have no node row (within a page's span) left out.
func (x suite) TestListPagesCarryChildren(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	addBundles(t, s, "a.org", "b.org")
	var in []*datastore.Entry
	for i := range 17 {
		e := &datastore.Entry{SPIFFEID: fmt.Sprintf("spiffe://td/w%d", i), ParentID: "spiffe://td/p",
			Selectors: sels(fmt.Sprintf("unix:uid:%d", i))}
		if i%2 == 0 {
			e.Selectors = append(e.Selectors, sels("k8s:ns:a", fmt.Sprintf("k8s:sa:%d", i))...)
			e.DNSNames = []string{fmt.Sprintf("w%d.example", i), "a.example"}
		}
		if i%3 == 0 {
			e.FederatesWith = []string{"b.org", "a.org"}
		}
		in = append(in, e)
	}
	created := mustCreate(t, s, in...)
	ids := make([]string, len(created))
	for i, e := range created {
		ids[i] = e.ID
	}
	byID, err := s.GetEntries(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 9 {
		n := &datastore.AttestedNode{SPIFFEID: fmt.Sprintf("spiffe://td/agent/n%d", 2*i), AttestationType: "t", CertSerial: "1",
			Selectors: sels(fmt.Sprintf("a:%d", i), "b:x")}
		if _, err := s.CreateNode(ctx, n); err != nil {
			t.Fatal(err)
		}
		// Selectors of an ID between two nodes, with no node row.
		if err := s.SetNodeSelectors(ctx, fmt.Sprintf("spiffe://td/agent/n%d", 2*i+1), sels("orphan:1")); err != nil {
			t.Fatal(err)
		}
	}
	for _, size := range []int{1, 2, 5, 16, 17, 100} {
		tok, got := "", 0
		for {
			page, next, err := s.ListEntries(ctx, datastore.EntryFilter{}, datastore.Page{Size: size, Token: tok})
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range page {
				if !reflect.DeepEqual(e, byID[e.ID]) {
					t.Fatalf("size %d: listed entry\n%+v\nread by ID\n%+v", size, e, byID[e.ID])
				}
			}
			got += len(page)
			if tok = next; tok == "" {
				break
			}
		}
		if got != len(in) {
			t.Fatalf("size %d: listed %d entries, want %d", size, got, len(in))
		}
		tok, got = "", 0
		for {
			page, next, err := s.ListNodes(ctx, datastore.NodeFilter{}, datastore.Page{Size: size, Token: tok})
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range page {
				want, err := s.GetNode(ctx, n.SPIFFEID)
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(n, want) {
					t.Fatalf("size %d: listed node\n%+v\nread by ID\n%+v", size, n, want)
				}
			}
			got += len(page)
			if tok = next; tok == "" {
				break
			}
		}
		if got != 9 {
			t.Fatalf("size %d: listed %d nodes, want 9", size, got)
		}
	}
}
