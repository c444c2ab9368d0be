package convert_test

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/protobuf/proto"

	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/server/api/convert"
)

// maxErrLen bounds every conversion error, whatever the size of the input:
// an error quotes at most a short prefix of each value it names.
const maxErrLen = 1024

func checkErrLen(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil && len(err.Error()) > maxErrLen {
		t.Fatalf("%s: error of %d bytes (max %d): %.300s...", what, len(err.Error()), maxErrLen, err)
	}
}

// FuzzIDFromProto checks the conversion of a wire SPIFFE ID (as an agent,
// an admin or the SPIRE CLI sends it): it never panics, an accepted ID
// round-trips through every representation Sigil uses (the wire form, the
// stored string, go-spiffe's parser), the member and workload variants agree
// with it, and errors stay short.
func FuzzIDFromProto(f *testing.F) {
	for _, s := range [][2]string{
		{"example.org", "/workload"},
		{"example.org", "workload/a"},
		{"example.org", ""},
		{"example.org", "/spire/agent/join_token/abc"},
		{"example.org", "/spire/server"},
		{"example.org", "/spire"},
		{"example.org", "/spirex"},
		{"other.org", "/a"},
		{"xn--bcher-kva.example", "/a-b_c.d"},
		{"Example.org", "/a"},
		{"spiffe://example.org", "/a"},
		{"example.org:8443", "/a"},
		{"", "/a"},
		{"example.org", "/a//b"},
		{"example.org", "/a/./b"},
		{"example.org", "/.."},
		{"example.org", "/a%2F"},
		{"example.org", "/a/"},
		{"example.org", "/"},
		{"example.org", "/a?b#c"},
		{"example.org", "/" + strings.Repeat("a", 2030)},
		{"example.org", "/" + strings.Repeat("a", 2048)},
		{strings.Repeat("a", 3000), "/a"},
		{strings.Repeat("A:", 3000), "/a"},
		{"example.org", strings.Repeat("/\x00", 1000)},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, tdName, path string) {
		p := &types.SPIFFEID{TrustDomain: tdName, Path: path}
		id, err := convert.IDFromProto(p)
		member, merr := convert.MemberIDFromProto(td, p)
		workload, werr := convert.WorkloadIDFromProto(td, p)
		checkErrLen(t, "IDFromProto", err)
		checkErrLen(t, "MemberIDFromProto", merr)
		checkErrLen(t, "WorkloadIDFromProto", werr)
		if err != nil {
			if !id.IsZero() || merr == nil || werr == nil {
				t.Fatalf("IDFromProto(%q, %q) failed (%v) but: id %q, member err %v, workload err %v", tdName, path, err, id, merr, werr)
			}
			return
		}
		s := id.String()
		if len(s) > convert.MaxIDLength {
			t.Fatalf("IDFromProto(%q, %q) accepted %d bytes", tdName, path, len(s))
		}
		if id.TrustDomain().Name() != tdName {
			t.Fatalf("IDFromProto(%q, %q) = %q: trust domain changed", tdName, path, s)
		}
		if id.Path() != path && id.Path() != "/"+path {
			t.Fatalf("IDFromProto(%q, %q) = %q: path changed", tdName, path, s)
		}
		if again, err := spiffeid.FromString(s); err != nil || again != id {
			t.Fatalf("spiffeid.FromString(%q) = %v, %v", s, again, err)
		}
		wire := convert.IDToProto(id)
		if again, err := convert.IDFromProto(wire); err != nil || again != id {
			t.Fatalf("IDFromProto(IDToProto(%q)) = %v, %v", s, again, err)
		}
		if stored, err := convert.IDStringToProto(s); err != nil || !proto.Equal(stored, wire) {
			t.Fatalf("IDStringToProto(%q) = %v, %v; want %v", s, stored, err, wire)
		}
		wantMember := id.MemberOf(td) && id.Path() != ""
		if (merr == nil) != wantMember || (merr == nil && member != id) {
			t.Fatalf("MemberIDFromProto(%q) = %v, %v", s, member, merr)
		}
		wantWorkload := wantMember && !convert.IsReservedPath(id.Path())
		if (werr == nil) != wantWorkload || (werr == nil && workload != id) {
			t.Fatalf("WorkloadIDFromProto(%q) = %v, %v", s, workload, werr)
		}
	})
}

// FuzzTrustDomainFromNameOrID checks the parser of trust domain arguments
// (federates_with, bundle calls): it never panics, an accepted trust domain
// parses back from both its name and its ID form, and errors stay short.
func FuzzTrustDomainFromNameOrID(f *testing.F) {
	for _, s := range []string{
		"example.org", "spiffe://example.org", "spiffe://example.org/", "spiffe://example.org/a",
		"SPIFFE://example.org", "https://example.org", "example.org/a", "Example.org", "",
		"spiffe://", "spiffe:/example.org", "a_b-c.d", strings.Repeat("x", 5000),
		"spiffe://" + strings.Repeat("x", 5000) + "/",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := convert.TrustDomainFromNameOrID(s)
		checkErrLen(t, "TrustDomainFromNameOrID", err)
		if err != nil {
			if !got.IsZero() {
				t.Fatalf("TrustDomainFromNameOrID(%q) failed (%v) but returned %q", s, err, got)
			}
			return
		}
		if got.IsZero() || (s != got.Name() && s != got.IDString()) {
			t.Fatalf("TrustDomainFromNameOrID(%q) = %q", s, got)
		}
		for _, form := range []string{got.Name(), got.IDString()} {
			if again, err := convert.TrustDomainFromNameOrID(form); err != nil || again != got {
				t.Fatalf("TrustDomainFromNameOrID(%q) = %v, %v; want %q", form, again, err, got)
			}
		}
		if again, err := convert.TrustDomainFromName(got.Name()); err != nil || again != got {
			t.Fatalf("TrustDomainFromName(%q) = %v, %v", got.Name(), again, err)
		}
	})
}

// FuzzEntryFromProto checks the validation of a wire registration entry
// (entry create/update, from an admin or spire-controller-manager): it never
// panics, errors stay short, and an accepted entry is valid, normalized
// (selectors sorted and unique, no duplicate DNS names or federated trust
// domains) and round-trips through its wire form unchanged.
func FuzzEntryFromProto(f *testing.F) {
	type seed struct {
		id, spiffeID, parentID, selectors, dnsNames, federatesWith, hint string
		x509TTL, jwtTTL                                                  int32
		expiresAt                                                        int64
	}
	for _, s := range []seed{
		{"", "spiffe://example.org/web", "spiffe://example.org/spire/agent/join_token/t", "unix:uid:1000", "", "", "", 0, 0, 0},
		{"entry-1", "spiffe://example.org/db", "spiffe://example.org/node", "k8s:ns:prod\nk8s:sa:db\nk8s:ns:prod", "db.example.org\n*.db.example.org\ndb.example.org", "other.org\nspiffe://third.org\nother.org", "internal", 3600, 300, 1900000000},
		{"", "spiffe://example.org/spire/x", "spiffe://example.org/node", "unix:uid:0", "", "", "", 0, 0, 0},
		{"", "spiffe://example.org/web", "spiffe://example.org", "unix:uid:0", "", "", "", 0, 0, 0},
		{"", "spiffe://other.org/web", "spiffe://example.org/node", "unix:uid:0", "", "", "", 0, 0, 0},
		{"", "spiffe://example.org/web", "spiffe://example.org/node", "", "", "", "", 0, 0, 0},
		{"", "spiffe://example.org/web", "spiffe://example.org/node", "unix:uid:0", "a..b", "", "", 0, 0, 0},
		{"", "spiffe://example.org/web", "spiffe://example.org/node", "unix:uid:0", "", "example.org", "", 0, 0, 0},
		{"", "spiffe://example.org/web", "spiffe://example.org/node", "unix:uid:0", "", "", "", -1, 0, 0},
		{"bad id!", "spiffe://example.org/web", "spiffe://example.org/node", "unix:uid:0", "", "", "", 0, 0, 0},
		{"", "spiffe://example.org/web", "spiffe://example.org/node", "unix:uid:0", "", "", strings.Repeat("h", 1025), 0, 0, 0},
		{"", "spiffe://example.org/web", "spiffe://example.org/node", strings.Repeat("t", 3000) + ":v", "", "", "", 0, 0, 0},
		{"", "spiffe://example.org/web", "spiffe://example.org/node", "unix:uid:0", strings.Repeat("d", 3000), strings.Repeat("f", 3000), "", 0, 0, 0},
		{strings.Repeat("i", 3000), "spiffe://example.org/web", "spiffe://example.org/node", "unix:uid:0", "", "", "", 0, 0, 0},
	} {
		f.Add(s.id, s.spiffeID, s.parentID, s.selectors, s.dnsNames, s.federatesWith, s.hint, s.x509TTL, s.jwtTTL, s.expiresAt)
	}
	// wireID splits a SPIFFE ID string into the wire form without
	// validating it, so that the fuzzer can reach every field.
	wireID := func(s string) *types.SPIFFEID {
		rest, _ := strings.CutPrefix(s, "spiffe://")
		name, path, found := strings.Cut(rest, "/")
		if found {
			path = "/" + path
		}
		return &types.SPIFFEID{TrustDomain: name, Path: path}
	}
	lines := func(s string) []string {
		if s == "" {
			return nil
		}
		return strings.Split(s, "\n")
	}
	f.Fuzz(func(t *testing.T, id, spiffeID, parentID, selectors, dnsNames, federatesWith, hint string, x509TTL, jwtTTL int32, expiresAt int64) {
		in := &types.Entry{
			Id: id, SpiffeId: wireID(spiffeID), ParentId: wireID(parentID),
			DnsNames: lines(dnsNames), FederatesWith: lines(federatesWith), Hint: hint,
			X509SvidTtl: x509TTL, JwtSvidTtl: jwtTTL, ExpiresAt: expiresAt, Admin: len(hint)%2 == 1,
		}
		for _, l := range lines(selectors) {
			typ, val, _ := strings.Cut(l, ":")
			in.Selectors = append(in.Selectors, &types.Selector{Type: typ, Value: val})
		}
		orig := proto.Clone(in)
		e, err := convert.EntryFromProto(td, in, nil)
		checkErrLen(t, "EntryFromProto", err)
		if !proto.Equal(in, orig) {
			t.Fatal("EntryFromProto changed its input")
		}
		if err != nil {
			return
		}
		if err := convert.ValidateEntry(td, e, nil); err != nil {
			t.Fatalf("EntryFromProto accepted %+v, which does not validate: %v", e, err)
		}
		if !slices.Equal(e.Selectors, selector.Dedupe(e.Selectors)) {
			t.Fatalf("selectors not normalized: %v", e.Selectors)
		}
		if !slices.IsSorted(e.FederatesWith) || len(slices.Compact(slices.Clone(e.FederatesWith))) != len(e.FederatesWith) {
			t.Fatalf("federates_with not normalized: %v", e.FederatesWith)
		}
		seen := map[string]bool{}
		for _, n := range e.DNSNames {
			if seen[n] {
				t.Fatalf("duplicate DNS name %q in %v", n, e.DNSNames)
			}
			seen[n] = true
		}
		out, err := convert.EntryToProto(e)
		if err != nil {
			t.Fatalf("EntryToProto(%+v): %v", e, err)
		}
		again, err := convert.EntryFromProto(td, out, nil)
		if err != nil {
			t.Fatalf("EntryFromProto(EntryToProto(%+v)): %v", e, err)
		}
		if !reflect.DeepEqual(again, e) {
			t.Fatalf("round trip changed the entry:\n%+v\n%+v", e, again)
		}
	})
}
