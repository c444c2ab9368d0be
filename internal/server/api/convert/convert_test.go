package convert_test

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/protobuf/proto"

	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/server/api/convert"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func TestIDFromProto(t *testing.T) {
	for _, tc := range []struct {
		td, path string
		want     string // "" = error expected
		errPart  string
	}{
		{"example.org", "/a/b", "spiffe://example.org/a/b", ""},
		{"example.org", "a/b", "spiffe://example.org/a/b", ""}, // SPIRE back-compat: leading slash added
		{"example.org", "", "spiffe://example.org", ""},
		{"Example.org", "/a", "", "trust domain characters"},
		{"", "/a", "", "trust domain is missing"},
		{"spiffe://example.org", "/a", "", "must be a name"},
		{"example.org", "/a//b", "", "empty segments"},
		{"example.org", "/a/.", "", "dot segments"},
		{"example.org", "/..", "", "dot segments"},
		{"example.org", "/a%41", "", "characters are limited"},
		{"example.org", "/a/", "", "trailing slash"},
		{"example.org", "/" + strings.Repeat("a", 2048), "", "longer than 2048"},
	} {
		id, err := convert.IDFromProto(&types.SPIFFEID{TrustDomain: tc.td, Path: tc.path})
		switch {
		case tc.want != "" && (err != nil || id.String() != tc.want):
			t.Errorf("%q %q: got %v, %v; want %s", tc.td, tc.path, id, err, tc.want)
		case tc.want == "" && (err == nil || !strings.Contains(err.Error(), tc.errPart)):
			t.Errorf("%q %q: err = %v, want it to contain %q", tc.td, tc.path, err, tc.errPart)
		}
	}
	if _, err := convert.IDFromProto(nil); err == nil {
		t.Error("nil ID accepted")
	}
}

func TestValidateDNSName(t *testing.T) {
	for name, ok := range map[string]bool{
		"example.org": true, "*.example.org": true, "a-b.c": true, "localhost": true, "A.B": true,
		"": false, "*": false, "a.*.b": false, "-a.b": false, "a-.b": false, "a..b": false, "a_b.c": false,
		"a b": false, strings.Repeat("a", 64) + ".b": false, strings.Repeat("a.", 127) + "ab": false,
	} {
		if err := convert.ValidateDNSName(name); (err == nil) != ok {
			t.Errorf("%q: err = %v, want ok=%v", name, err, ok)
		}
	}
}

func TestEntryRoundTripAndMask(t *testing.T) {
	in := &types.Entry{
		Id:          "e1",
		SpiffeId:    &types.SPIFFEID{TrustDomain: "example.org", Path: "/w"},
		ParentId:    &types.SPIFFEID{TrustDomain: "example.org", Path: "/spire/agent/a"},
		Selectors:   []*types.Selector{{Type: "unix", Value: "uid:2"}, {Type: "unix", Value: "uid:1"}, {Type: "unix", Value: "uid:1"}},
		X509SvidTtl: 1, JwtSvidTtl: 2,
		FederatesWith: []string{"spiffe://b.org", "a.org", "b.org"},
		Admin:         true, Downstream: true, ExpiresAt: 3,
		DnsNames: []string{"x.org", "y.org", "x.org"}, StoreSvid: true, Hint: "h",
	}
	e, err := convert.EntryFromProto(td, in, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Selectors) != 2 || e.Selectors[0].Value != "uid:1" || strings.Join(e.FederatesWith, ",") != "a.org,b.org" || strings.Join(e.DNSNames, ",") != "x.org,y.org" {
		t.Errorf("normalization: %+v", e)
	}
	e.CreatedAt, e.RevisionNumber = 4, 5
	out, err := convert.EntryToProto(e)
	if err != nil {
		t.Fatal(err)
	}
	want := &types.Entry{
		Id: "e1", SpiffeId: in.SpiffeId, ParentId: in.ParentId,
		Selectors:   []*types.Selector{{Type: "unix", Value: "uid:1"}, {Type: "unix", Value: "uid:2"}},
		X509SvidTtl: 1, JwtSvidTtl: 2, FederatesWith: []string{"a.org", "b.org"}, Admin: true, Downstream: true, ExpiresAt: 3,
		DnsNames: []string{"x.org", "y.org"}, StoreSvid: true, Hint: "h", CreatedAt: 4, RevisionNumber: 5,
	}
	if !proto.Equal(out, want) {
		t.Errorf("round trip:\n got %v\nwant %v", out, want)
	}
	// An empty mask keeps only the ID; a full mask keeps everything.
	masked := proto.Clone(out).(*types.Entry)
	convert.ApplyEntryMask(masked, &types.EntryMask{})
	if !proto.Equal(masked, &types.Entry{Id: "e1"}) {
		t.Errorf("empty mask left %v", masked)
	}
	full := proto.Clone(out).(*types.Entry)
	convert.ApplyEntryMask(full, convert.AllEntryFields)
	if !proto.Equal(full, out) {
		t.Errorf("full mask changed the entry")
	}
}

func TestEntryFromProtoMasked(t *testing.T) {
	// Only masked fields are read and validated.
	e, err := convert.EntryFromProto(td, &types.Entry{Id: "x", Hint: "h", SpiffeId: &types.SPIFFEID{TrustDomain: "BAD"}}, &types.EntryMask{Hint: true})
	if err != nil {
		t.Fatal(err)
	}
	if e.Hint != "h" || e.SPIFFEID != "" || e.Selectors != nil {
		t.Errorf("masked conversion = %+v", e)
	}
	if _, err := convert.EntryFromProto(td, &types.Entry{SpiffeId: &types.SPIFFEID{TrustDomain: "BAD"}}, &types.EntryMask{SpiffeId: true}); err == nil {
		t.Error("masked SPIFFE ID not validated")
	}
}

func TestValidateEntry(t *testing.T) {
	good := func() *datastore.Entry {
		return &datastore.Entry{SPIFFEID: "spiffe://example.org/w", ParentID: "spiffe://example.org/spire/agent/a",
			Selectors: []selector.Selector{{Type: "unix", Value: "uid:1"}}}
	}
	if err := convert.ValidateEntry(td, good(), nil); err != nil {
		t.Fatalf("good entry: %v", err)
	}
	for _, tc := range []struct {
		mod  func(*datastore.Entry)
		part string
	}{
		{func(e *datastore.Entry) { e.ParentID = "spiffe://other.org/x" }, "invalid parent ID"},
		{func(e *datastore.Entry) { e.SPIFFEID = "spiffe://example.org/spire/x" }, "reserved namespace"},
		{func(e *datastore.Entry) { e.SPIFFEID = "spiffe://example.org/a%2Fb" }, "invalid spiffe ID"},
		{func(e *datastore.Entry) { e.Selectors = nil }, "selector list is empty"},
		{func(e *datastore.Entry) { e.X509SVIDTTL = -1 }, "x509_svid_ttl"},
		{func(e *datastore.Entry) { e.FederatesWith = []string{"example.org"} }, "own trust domain"},
		{func(e *datastore.Entry) { e.FederatesWith = []string{"spiffe://a.org"} }, "must be a name"},
		{func(e *datastore.Entry) { e.ID = strings.Repeat("i", 256) }, "invalid entry ID"},
	} {
		e := good()
		tc.mod(e)
		if err := convert.ValidateEntry(td, e, nil); err == nil || !strings.Contains(err.Error(), tc.part) {
			t.Errorf("err = %v, want it to contain %q", err, tc.part)
		}
	}
}

func TestAgentToProto(t *testing.T) {
	n := &datastore.AttestedNode{SPIFFEID: "spiffe://example.org/spire/agent/x", AttestationType: "join_token",
		CertSerial: "12", CertNotAfter: 99, CanReattest: true, Selectors: []selector.Selector{{Type: "a", Value: "1"}}}
	a, err := convert.AgentToProto(n)
	if err != nil {
		t.Fatal(err)
	}
	if a.Id.Path != "/spire/agent/x" || a.X509SvidSerialNumber != "12" || a.X509SvidExpiresAt != 99 || a.Banned || !a.CanReattest || len(a.Selectors) != 1 {
		t.Errorf("agent = %v", a)
	}
	n.CertSerial = ""
	if a, _ := convert.AgentToProto(n); !a.Banned {
		t.Error("node with no serials not reported banned")
	}
}
