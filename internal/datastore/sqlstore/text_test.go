package sqlstore

import (
	"context"
	"errors"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// TestTextThatIsNotUTF8: text fields hold UTF-8 without NUL on every
// backend (PostgreSQL's text cannot hold anything else): an entry, node or
// bundle with invalid UTF-8 or a NUL byte in one is refused with a precise
// error of its own, changing nothing and failing no other entry of its
// batch.
func (x suite) TestTextThatIsNotUTF8(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	ok := func(id string) *datastore.Entry {
		return &datastore.Entry{ID: id, SPIFFEID: "spiffe://td/" + id, ParentID: "spiffe://td/p", Selectors: sels("u:1")}
	}
	bad := []*datastore.Entry{ok("hint"), ok("dns"), ok("sel"), ok("id\x00"), ok("fed"), ok("parent"), ok("spiffe")}
	bad[0].Hint = "a\x00b"
	bad[1].DNSNames = []string{"a\xffb.example"}
	bad[2].Selectors = []selector.Selector{{Type: "u", Value: "\xc3\x28"}}
	bad[4].FederatesWith = []string{"x\x00.org"}
	bad[5].ParentID = "spiffe://td/\xff"
	bad[6].SPIFFEID = "spiffe://td/\x00"
	res, err := s.CreateEntries(ctx, append([]*datastore.Entry{ok("good")}, bad...))
	if err != nil {
		t.Fatalf("one bad entry failed the batch: %v", err)
	}
	if res[0].Err != nil {
		t.Fatalf("good entry: %v", res[0].Err)
	}
	for i, r := range res[1:] {
		if !errors.Is(r.Err, datastore.ErrInvalid) {
			t.Errorf("bad entry %d: %v, want ErrInvalid", i, r.Err)
		}
	}
	if n, _ := s.CountEntries(ctx, datastore.EntryFilter{}); n != 1 {
		t.Fatalf("%d entries stored, want 1", n)
	}
	if _, err := s.UpdateEntry(ctx, &datastore.Entry{ID: "good", Hint: "\xff"}, &datastore.EntryMask{Hint: true}); err == nil {
		t.Error("update to an invalid hint accepted")
	}
	if _, err := s.CreateNode(ctx, &datastore.AttestedNode{SPIFFEID: "spiffe://td/agent/\xff", AttestationType: "x"}); err == nil {
		t.Error("node with an invalid SPIFFE ID accepted")
	}
	if _, err := s.CreateNode(ctx, &datastore.AttestedNode{SPIFFEID: "spiffe://td/agent/a", AttestationType: "x", Selectors: []selector.Selector{{Type: "t", Value: "\xff"}}}); err == nil {
		t.Error("node with an invalid selector accepted")
	}
	if _, err := s.SetBundle(ctx, &datastore.Bundle{TrustDomain: "b\xff.org"}); err == nil {
		t.Error("bundle with an invalid trust domain accepted")
	}
	if n, _ := s.CountNodes(ctx, datastore.NodeFilter{}); n != 0 {
		t.Errorf("%d nodes stored", n)
	}
	// Filtering on such text: it matches no stored text; in a set the
	// other items still match where the mode allows.
	bad1 := []selector.Selector{{Type: "u", Value: "1"}, {Type: "u", Value: "\xff"}}
	for _, c := range []struct {
		f    datastore.EntryFilter
		want int
	}{
		{datastore.EntryFilter{BySPIFFEID: "spiffe://td/\x00"}, 0},
		{datastore.EntryFilter{ByHint: ptr("\xff")}, 0},
		{datastore.EntryFilter{BySelectors: bad1, SelectorMatch: datastore.MatchAny}, 1},
		{datastore.EntryFilter{BySelectors: bad1, SelectorMatch: datastore.MatchSubset}, 1},
		{datastore.EntryFilter{BySelectors: bad1, SelectorMatch: datastore.MatchExact}, 0},
		{datastore.EntryFilter{BySelectors: bad1, SelectorMatch: datastore.MatchSuperset}, 0},
		{datastore.EntryFilter{BySelectors: bad1[1:], SelectorMatch: datastore.MatchAny}, 0},
		{datastore.EntryFilter{ByFederatesWith: []string{"\x00"}, FederatesMatch: datastore.MatchAny}, 0},
	} {
		es, _, err := s.ListEntries(ctx, c.f, datastore.Page{Size: 10})
		n, cerr := s.CountEntries(ctx, c.f)
		if err != nil || cerr != nil || len(es) != c.want || n != c.want {
			t.Errorf("filter %+v: listed %d (%v), counted %d (%v); want %d", c.f, len(es), err, n, cerr, c.want)
		}
	}
	if nodes, _, err := s.ListNodes(ctx, datastore.NodeFilter{ByAttestationType: "\x00"}, datastore.Page{}); err != nil || len(nodes) != 0 {
		t.Errorf("ListNodes by an invalid attestation type: %d, %v", len(nodes), err)
	}
	if _, _, err := s.ListEntries(ctx, datastore.EntryFilter{}, datastore.Page{Size: 1, Token: encodePageToken("\xff")}); !errors.Is(err, datastore.ErrInvalidPage) {
		t.Errorf("page token of a key that is not text: %v, want ErrInvalidPage", err)
	}

	// Looking up such text finds nothing and is no error of the store.
	if _, err := s.GetEntry(ctx, "\xff"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("GetEntry(invalid UTF-8): %v, want ErrNotFound", err)
	}
	if _, err := s.GetNode(ctx, "a\x00"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("GetNode(NUL): %v, want ErrNotFound", err)
	}
}
