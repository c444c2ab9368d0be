package sqlstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/datastore"
)

func (x suite) TestNodeCRUDAndEvents(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	in := &datastore.AttestedNode{SPIFFEID: "spiffe://td/agent/1", AttestationType: "join_token", CertSerial: "123",
		CertNotAfter: t0.Unix() + 3600, CanReattest: true, Selectors: sels("jt:b", "jt:a", "jt:a")}
	n, err := s.CreateNode(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	if n.CreatedAt != t0.Unix() || !reflect.DeepEqual(n.Selectors, sels("jt:a", "jt:b")) {
		t.Fatalf("created node: %+v", n)
	}
	got, err := s.GetNode(ctx, in.SPIFFEID)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, n) {
		t.Fatalf("GetNode = %+v, want %+v", got, n)
	}
	_, err = s.CreateNode(ctx, in)
	wantErr(t, err, datastore.ErrAlreadyExists)
	_, err = s.GetNode(ctx, "spiffe://td/none")
	wantErr(t, err, datastore.ErrNotFound)

	// Masked update (renewal): only the new serial fields change.
	upd, err := s.UpdateNode(ctx, &datastore.AttestedNode{SPIFFEID: in.SPIFFEID, NewCertSerial: "456", NewCertNotAfter: 7, CertSerial: "ignored"},
		&datastore.NodeMask{NewCertSerial: true, NewCertNotAfter: true})
	if err != nil {
		t.Fatal(err)
	}
	want := *n
	want.NewCertSerial, want.NewCertNotAfter = "456", 7
	if !reflect.DeepEqual(upd, &want) {
		t.Fatalf("UpdateNode = %+v, want %+v", upd, &want)
	}
	// Ban (nil mask: every field).
	banned, err := s.UpdateNode(ctx, &datastore.AttestedNode{SPIFFEID: in.SPIFFEID}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !banned.Banned() || banned.CanReattest || banned.AttestationType != "join_token" {
		t.Fatalf("banned node: %+v", banned)
	}
	_, err = s.UpdateNode(ctx, &datastore.AttestedNode{SPIFFEID: "spiffe://td/none"}, nil)
	wantErr(t, err, datastore.ErrNotFound)

	if err := s.SetNodeSelectors(ctx, in.SPIFFEID, sels("x:1")); err != nil {
		t.Fatal(err)
	}
	got, _ = s.GetNode(ctx, in.SPIFFEID)
	if !reflect.DeepEqual(got.Selectors, sels("x:1")) {
		t.Fatalf("selectors after set: %v", got.Selectors)
	}

	del, err := s.DeleteNode(ctx, in.SPIFFEID)
	if err != nil {
		t.Fatal(err)
	}
	if del.SPIFFEID != in.SPIFFEID || !reflect.DeepEqual(del.Selectors, sels("x:1")) {
		t.Fatalf("DeleteNode returned %+v", del)
	}
	_, err = s.DeleteNode(ctx, in.SPIFFEID)
	wantErr(t, err, datastore.ErrNotFound)
	var left int
	if err := s.r.QueryRowContext(ctx, "SELECT COUNT(*) FROM node_selectors").Scan(&left); err != nil || left != 0 {
		t.Fatalf("node selectors left after delete: %d %v", left, err)
	}

	// Selectors set before the node exists are kept by CreateNode without
	// selectors (attestation order).
	if err := s.SetNodeSelectors(ctx, "spiffe://td/agent/2", sels("pre:1")); err != nil {
		t.Fatal(err)
	}
	n2, err := s.CreateNode(ctx, &datastore.AttestedNode{SPIFFEID: "spiffe://td/agent/2", AttestationType: "x509pop", CertSerial: "1"})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(n2.Selectors, sels("pre:1")) {
		t.Fatalf("pre-set selectors lost: %v", n2.Selectors)
	}

	evs, err := s.ListNodeEvents(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range evs {
		ids = append(ids, e.SPIFFEID)
	}
	a1, a2 := in.SPIFFEID, "spiffe://td/agent/2"
	// create, update, ban, set selectors, delete, set selectors, create
	if wantIDs := []string{a1, a1, a1, a1, a1, a2, a2}; !slices.Equal(ids, wantIDs) {
		t.Fatalf("node events %v, want %v", ids, wantIDs)
	}
	last, _ := s.LastNodeEventID(ctx)
	if last != evs[len(evs)-1].ID {
		t.Fatalf("LastNodeEventID = %d", last)
	}
	if page, _ := s.ListNodeEvents(ctx, evs[4].ID, 1); len(page) != 1 || page[0].ID != evs[5].ID {
		t.Fatalf("ListNodeEvents(after, 1) = %v", page)
	}
}

func (x suite) TestListNodesFilters(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	mk := func(id, typ, serial string, notAfter int64, reattest bool, ss ...string) {
		t.Helper()
		if _, err := s.CreateNode(ctx, &datastore.AttestedNode{SPIFFEID: "spiffe://td/" + id, AttestationType: typ, CertSerial: serial,
			CertNotAfter: notAfter, CanReattest: reattest, Selectors: sels(ss...)}); err != nil {
			t.Fatal(err)
		}
	}
	mk("n1", "join_token", "1", 100, false, "a:1")
	mk("n2", "x509pop", "2", 200, true, "a:1", "b:2")
	mk("n3", "x509pop", "", 300, true, "a:1", "b:2", "c:3") // banned
	mk("n4", "tpm", "4", 400, false, "b:2")
	mk("n5", "tpm", "5", 500, false)
	// A node whose current serial is empty but has a pending one is not banned.
	mk("n6", "tpm", "", 600, false, "z:9")
	if _, err := s.UpdateNode(ctx, &datastore.AttestedNode{SPIFFEID: "spiffe://td/n6", NewCertSerial: "6"}, &datastore.NodeMask{NewCertSerial: true}); err != nil {
		t.Fatal(err)
	}
	ab := sels("a:1", "b:2")
	cases := []struct {
		name string
		f    datastore.NodeFilter
		want []string
	}{
		{"none", datastore.NodeFilter{}, []string{"n1", "n2", "n3", "n4", "n5", "n6"}},
		{"type", datastore.NodeFilter{ByAttestationType: "x509pop"}, []string{"n2", "n3"}},
		{"banned", datastore.NodeFilter{ByBanned: ptr(true)}, []string{"n3"}},
		{"not banned", datastore.NodeFilter{ByBanned: ptr(false)}, []string{"n1", "n2", "n4", "n5", "n6"}},
		{"expires before", datastore.NodeFilter{ExpiresBefore: 300}, []string{"n1", "n2"}},
		{"can reattest", datastore.NodeFilter{ByCanReattest: ptr(true)}, []string{"n2", "n3"}},
		{"cannot reattest", datastore.NodeFilter{ByCanReattest: ptr(false)}, []string{"n1", "n4", "n5", "n6"}},
		{"sel exact", datastore.NodeFilter{BySelectors: ab, SelectorMatch: datastore.MatchExact}, []string{"n2"}},
		{"sel subset", datastore.NodeFilter{BySelectors: ab, SelectorMatch: datastore.MatchSubset}, []string{"n1", "n2", "n4"}},
		{"sel superset", datastore.NodeFilter{BySelectors: ab, SelectorMatch: datastore.MatchSuperset}, []string{"n2", "n3"}},
		{"sel any", datastore.NodeFilter{BySelectors: ab, SelectorMatch: datastore.MatchAny}, []string{"n1", "n2", "n3", "n4"}},
		{"combined", datastore.NodeFilter{BySelectors: ab, SelectorMatch: datastore.MatchAny, ByBanned: ptr(false), ByAttestationType: "x509pop"}, []string{"n2"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, next, err := s.ListNodes(ctx, c.f, datastore.Page{})
			if err != nil {
				t.Fatal(err)
			}
			if next != "" {
				t.Fatalf("next token without paging")
			}
			var ids []string
			for _, n := range got {
				ids = append(ids, n.SPIFFEID[len("spiffe://td/"):])
			}
			if !slices.Equal(ids, c.want) {
				t.Fatalf("got %v, want %v", ids, c.want)
			}
			if cnt, err := s.CountNodes(ctx, c.f); err != nil || cnt != len(c.want) {
				t.Fatalf("count = %d, %v; want %d", cnt, err, len(c.want))
			}
		})
	}
	// Listed nodes carry their selectors.
	all, _, _ := s.ListNodes(ctx, datastore.NodeFilter{}, datastore.Page{})
	if !reflect.DeepEqual(all[2].Selectors, sels("a:1", "b:2", "c:3")) {
		t.Fatalf("listed node selectors: %v", all[2].Selectors)
	}
	// Pagination.
	var paged []*datastore.AttestedNode
	tok := ""
	for {
		page, next, err := s.ListNodes(ctx, datastore.NodeFilter{}, datastore.Page{Size: 4, Token: tok})
		if err != nil {
			t.Fatal(err)
		}
		paged = append(paged, page...)
		if next == "" {
			break
		}
		tok = next
	}
	if !reflect.DeepEqual(paged, all) {
		t.Fatalf("paged nodes differ from the full list")
	}
	_, _, err := s.ListNodes(ctx, datastore.NodeFilter{}, datastore.Page{Size: 1, Token: "%%%"})
	wantErr(t, err, ErrInvalidPage)
}

func (x suite) TestJoinTokens(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	h := sha256.Sum256([]byte("secret"))
	tok := &datastore.JoinToken{Hash: h, ExpiresAt: t0.Unix() + 600}
	if err := s.CreateJoinToken(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if tok.CreatedAt != t0.Unix() {
		t.Fatalf("CreatedAt = %d", tok.CreatedAt)
	}
	wantErr(t, s.CreateJoinToken(ctx, &datastore.JoinToken{Hash: h, ExpiresAt: 1}), datastore.ErrAlreadyExists)
	got, err := s.ConsumeJoinToken(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	if *got != *tok {
		t.Fatalf("consumed %+v, want %+v", got, tok)
	}
	_, err = s.ConsumeJoinToken(ctx, h)
	wantErr(t, err, datastore.ErrNotFound)

	for i := range 4 {
		hh := sha256.Sum256([]byte(fmt.Sprint(i)))
		if err := s.CreateJoinToken(ctx, &datastore.JoinToken{Hash: hh, ExpiresAt: t0.Unix() + int64(i)*10}); err != nil {
			t.Fatal(err)
		}
	}
	n, err := s.PruneJoinTokens(ctx, time.Unix(t0.Unix()+15, 0))
	if err != nil || n != 2 {
		t.Fatalf("PruneJoinTokens = %d, %v; want 2", n, err)
	}
	if _, err := s.ConsumeJoinToken(ctx, sha256.Sum256([]byte("2"))); err != nil {
		t.Fatalf("unexpired token pruned: %v", err)
	}
	if _, err := s.ConsumeJoinToken(ctx, sha256.Sum256([]byte("1"))); err == nil {
		t.Fatal("expired token not pruned")
	}
}

func (x suite) TestJoinTokenSingleUseUnderConcurrency(t *testing.T) {
	f := x.newFixture(t)
	ctx := context.Background()
	// Two stores on one file: consumers in "different processes" too.
	stores := []*Store{f.store, f.open(t)}
	for round := range 5 {
		h := sha256.Sum256([]byte(fmt.Sprint("round", round)))
		if err := f.store.CreateJoinToken(ctx, &datastore.JoinToken{Hash: h, ExpiresAt: 1}); err != nil {
			t.Fatal(err)
		}
		const consumers = 16
		var wg sync.WaitGroup
		var mu sync.Mutex
		wins, notFound := 0, 0
		start := make(chan struct{})
		for i := range consumers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, err := stores[i%2].ConsumeJoinToken(ctx, h)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					wins++
				case isNotFound(err):
					notFound++
				default:
					t.Errorf("consume: %v", err)
				}
			}()
		}
		close(start)
		wg.Wait()
		if wins != 1 || notFound != consumers-1 {
			t.Fatalf("round %d: %d consumers succeeded, %d got ErrNotFound; want 1 and %d", round, wins, notFound, consumers-1)
		}
	}
}

func isNotFound(err error) bool {
	return err != nil && errors.Is(err, datastore.ErrNotFound)
}

func (x suite) TestCAJournal(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	_, err := s.GetCAJournal(ctx, "x509")
	wantErr(t, err, datastore.ErrNotFound)
	if err := s.SetCAJournal(ctx, "x509", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	if err := s.SetCAJournal(ctx, "x509", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	if err := s.SetCAJournal(ctx, "jwt", []byte("j")); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetCAJournal(ctx, "x509"); err != nil || string(got) != "v2" {
		t.Fatalf("GetCAJournal = %q, %v", got, err)
	}
	if got, err := s.GetCAJournal(ctx, "jwt"); err != nil || string(got) != "j" {
		t.Fatalf("GetCAJournal(jwt) = %q, %v", got, err)
	}
}

func (x suite) TestPromoteNodeSerial(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	const id = "spiffe://td/agent/p"
	if _, err := s.CreateNode(ctx, &datastore.AttestedNode{SPIFFEID: id, AttestationType: "join_token",
		CertSerial: "1", CertNotAfter: 100, NewCertSerial: "2", NewCertNotAfter: 200}); err != nil {
		t.Fatal(err)
	}
	before, err := s.LastNodeEventID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.PromoteNodeSerial(ctx, id, "3")
	wantErr(t, err, datastore.ErrConflict)
	n, err := s.PromoteNodeSerial(ctx, id, "2")
	if err != nil {
		t.Fatal(err)
	}
	if n.CertSerial != "2" || n.CertNotAfter != 200 || n.NewCertSerial != "" || n.NewCertNotAfter != 0 {
		t.Fatalf("after promotion: %+v", n)
	}
	if after, _ := s.LastNodeEventID(ctx); after <= before {
		t.Error("promotion wrote no node event")
	}
	_, err = s.PromoteNodeSerial(ctx, id, "2")
	wantErr(t, err, datastore.ErrConflict)

	// A ban between an agent's renewal and its first use of the new SVID
	// is never undone by the promotion.
	if _, err := s.UpdateNode(ctx, &datastore.AttestedNode{SPIFFEID: id, NewCertSerial: "4", NewCertNotAfter: 300},
		&datastore.NodeMask{NewCertSerial: true, NewCertNotAfter: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateNode(ctx, &datastore.AttestedNode{SPIFFEID: id, NewCertSerial: "4"},
		&datastore.NodeMask{CertSerial: true, CertNotAfter: true}); err != nil { // ban-like: current serial cleared
		t.Fatal(err)
	}
	_, err = s.PromoteNodeSerial(ctx, id, "4")
	wantErr(t, err, datastore.ErrConflict)
	if n, _ := s.GetNode(ctx, id); n.CertSerial != "" {
		t.Fatalf("promotion undid a ban: %+v", n)
	}
	_, err = s.PromoteNodeSerial(ctx, "spiffe://td/agent/missing", "1")
	wantErr(t, err, datastore.ErrConflict)
}

// TestNodeAgentVersion: agent_version (migration 0002) is stored, changed
// only under its mask, and survives other masked updates and a reopen.
func (x suite) TestNodeAgentVersion(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	const id = "spiffe://td/agent/v"
	if _, err := s.CreateNode(ctx, &datastore.AttestedNode{SPIFFEID: id, AttestationType: "join_token", CertSerial: "1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateNode(ctx, &datastore.AttestedNode{SPIFFEID: id, AgentVersion: "1.12.0", CertSerial: "ignored"}, &datastore.NodeMask{AgentVersion: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateNode(ctx, &datastore.AttestedNode{SPIFFEID: id, NewCertSerial: "2"}, &datastore.NodeMask{NewCertSerial: true}); err != nil {
		t.Fatal(err)
	}
	f.reopen(t)
	n, err := f.store.GetNode(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if n.AgentVersion != "1.12.0" || n.CertSerial != "1" || n.NewCertSerial != "2" {
		t.Fatalf("node %+v, want agent_version 1.12.0 and serials 1/2", n)
	}
	list, _, err := f.store.ListNodes(ctx, datastore.NodeFilter{}, datastore.Page{})
	if err != nil || len(list) != 1 || list[0].AgentVersion != "1.12.0" {
		t.Fatalf("ListNodes = %+v, %v", list, err)
	}
}

// TestDeleteJoinTokenNodeDeletesAliases: deleting a join_token node also
// deletes the alias entries its join token created (parent the node, the
// one selector spiffe_id:<node>), with an entry event each, as SPIRE does
// since 1.15.2; entries of any other shape under the node, and alias-shaped
// entries of a node attested otherwise, stay.
func (x suite) TestDeleteJoinTokenNodeDeletesAliases(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	const jt, pop = "spiffe://td/spire/agent/join_token/t1", "spiffe://td/spire/agent/x509pop/p1"
	for _, n := range []*datastore.AttestedNode{
		{SPIFFEID: jt, AttestationType: "join_token", CertSerial: "1"},
		{SPIFFEID: pop, AttestationType: "x509pop", CertSerial: "2"},
	} {
		if _, err := s.CreateNode(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	es := mustCreate(t, s,
		&datastore.Entry{SPIFFEID: "spiffe://td/node", ParentID: jt, Selectors: sels("spiffe_id:" + jt)},            // the alias
		&datastore.Entry{SPIFFEID: "spiffe://td/node2", ParentID: jt, Selectors: sels("spiffe_id:" + jt)},           // a second alias
		&datastore.Entry{SPIFFEID: "spiffe://td/web", ParentID: jt, Selectors: sels("unix:uid:1")},                  // a workload
		&datastore.Entry{SPIFFEID: "spiffe://td/two", ParentID: jt, Selectors: sels("spiffe_id:"+jt, "unix:uid:1")}, // two selectors
		&datastore.Entry{SPIFFEID: "spiffe://td/other", ParentID: jt, Selectors: sels("spiffe_id:spiffe://td/x")},   // another value
		&datastore.Entry{SPIFFEID: "spiffe://td/elsewhere", ParentID: "spiffe://td/p", Selectors: sels("spiffe_id:" + jt)},
		&datastore.Entry{SPIFFEID: "spiffe://td/popnode", ParentID: pop, Selectors: sels("spiffe_id:" + pop)},
	)
	last, err := s.LastEntryEventID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{jt, pop} {
		if _, err := s.DeleteNode(ctx, id); err != nil {
			t.Fatal(err)
		}
	}

	left, _, err := s.ListEntries(ctx, datastore.EntryFilter{}, datastore.Page{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range left {
		got = append(got, e.SPIFFEID)
	}
	slices.Sort(got)
	want := []string{"spiffe://td/elsewhere", "spiffe://td/other", "spiffe://td/popnode", "spiffe://td/two", "spiffe://td/web"}
	if !slices.Equal(got, want) {
		t.Fatalf("entries left %v, want %v", got, want)
	}
	evs, err := s.ListEntryEvents(ctx, last, 0)
	if err != nil {
		t.Fatal(err)
	}
	var deleted []string
	for _, e := range evs {
		if e.Kind != datastore.EntryDeleted {
			t.Fatalf("unexpected entry event %+v", e)
		}
		deleted = append(deleted, e.EntryID)
	}
	wantDeleted := []string{es[0].ID, es[1].ID}
	slices.Sort(wantDeleted)
	if !slices.Equal(deleted, wantDeleted) {
		t.Fatalf("entry events for %v, want deletions of the aliases %v", deleted, wantDeleted)
	}
}

// TestRenewNode: a renewal records the pending serial with a node event;
// a banned or missing node is refused and unchanged.
func (x suite) TestRenewNode(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	const id = "spiffe://td/agent/r"
	if _, err := s.CreateNode(ctx, &datastore.AttestedNode{SPIFFEID: id, AttestationType: "join_token", CertSerial: "1", CertNotAfter: 10}); err != nil {
		t.Fatal(err)
	}
	before, _ := s.LastNodeEventID(ctx)
	n, err := s.RenewNode(ctx, id, "2", 20)
	if err != nil || n.CertSerial != "1" || n.NewCertSerial != "2" || n.NewCertNotAfter != 20 {
		t.Fatalf("RenewNode = %+v, %v", n, err)
	}
	if got, _ := s.GetNode(ctx, id); got.NewCertSerial != "2" || got.NewCertNotAfter != 20 {
		t.Fatalf("stored %+v", got)
	}
	if after, _ := s.LastNodeEventID(ctx); after <= before {
		t.Error("renewal wrote no node event")
	}
	if _, err := s.UpdateNode(ctx, &datastore.AttestedNode{SPIFFEID: id}, &datastore.NodeMask{CertSerial: true, NewCertSerial: true}); err != nil {
		t.Fatal(err)
	}
	_, err = s.RenewNode(ctx, id, "3", 30)
	wantErr(t, err, datastore.ErrBanned)
	if got, _ := s.GetNode(ctx, id); !got.Banned() {
		t.Fatalf("a renewal unbanned the node: %+v", got)
	}
	_, err = s.RenewNode(ctx, "spiffe://td/agent/none", "1", 1)
	wantErr(t, err, datastore.ErrNotFound)
}
