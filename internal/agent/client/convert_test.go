package client

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

func validEntry() *types.Entry {
	return &types.Entry{
		Id:             "e1",
		SpiffeId:       &types.SPIFFEID{TrustDomain: "example.org", Path: "/w"},
		ParentId:       &types.SPIFFEID{TrustDomain: "example.org", Path: "/agent"},
		Selectors:      []*types.Selector{{Type: "unix", Value: "uid:1"}, {Type: "unix", Value: "gid:1"}, {Type: "unix", Value: "uid:1"}},
		FederatesWith:  []string{"fed.org"},
		DnsNames:       []string{"w.example.org"},
		X509SvidTtl:    60,
		JwtSvidTtl:     30,
		RevisionNumber: 3,
		CreatedAt:      1700000000,
		Hint:           "h",
	}
}

func TestEntryFromProto(t *testing.T) {
	e, err := EntryFromProto(validEntry())
	if err != nil {
		t.Fatal(err)
	}
	want := []selector.Selector{{Type: "unix", Value: "gid:1"}, {Type: "unix", Value: "uid:1"}}
	if len(e.Selectors) != 2 || e.Selectors[0] != want[0] || e.Selectors[1] != want[1] {
		t.Errorf("selectors = %v, want %v (sorted, deduplicated)", e.Selectors, want)
	}
	if e.SPIFFEID.String() != "spiffe://example.org/w" || e.ParentID.String() != "spiffe://example.org/agent" {
		t.Errorf("IDs = %s, %s", e.SPIFFEID, e.ParentID)
	}
	if e.X509SVIDTTL != time.Minute || e.JWTSVIDTTL != 30*time.Second || e.RevisionNumber != 3 ||
		e.CreatedAt.Unix() != 1700000000 || e.Hint != "h" || len(e.FederatesWith) != 1 || e.FederatesWith[0].Name() != "fed.org" {
		t.Errorf("converted entry = %+v", e)
	}

	for name, mutate := range map[string]func(*types.Entry){
		"no id":             func(e *types.Entry) { e.Id = "" },
		"no spiffe id":      func(e *types.Entry) { e.SpiffeId = nil },
		"bad spiffe id":     func(e *types.Entry) { e.SpiffeId.Path = "no-slash" },
		"bad trust domain":  func(e *types.Entry) { e.SpiffeId.TrustDomain = "Bad TD" },
		"bad parent":        func(e *types.Entry) { e.ParentId.Path = "x" },
		"no selectors":      func(e *types.Entry) { e.Selectors = nil },
		"empty selector":    func(e *types.Entry) { e.Selectors = []*types.Selector{{}} },
		"bad federation":    func(e *types.Entry) { e.FederatesWith = []string{"not a td"} },
		"negative ttl":      func(e *types.Entry) { e.X509SvidTtl = -1 },
		"negative revision": func(e *types.Entry) { e.RevisionNumber = -1 },
	} {
		pe := validEntry()
		mutate(pe)
		if _, err := EntryFromProto(pe); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestBundleFromProto(t *testing.T) {
	root := testca.SelfSigned(t, testca.Subject("root"), testca.Serial(1), testca.KeyUsage(x509.KeyUsageCertSign))
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	b, err := BundleFromProto(&types.Bundle{
		TrustDomain:     "example.org",
		X509Authorities: []*types.X509Certificate{{Asn1: root.Raw}},
		JwtAuthorities:  []*types.JWTKey{{KeyId: "k1", PublicKey: pub}},
		RefreshHint:     60,
		SequenceNumber:  7,
	})
	if err != nil {
		t.Fatal(err)
	}
	if !b.HasX509Authority(root) || !b.HasJWTAuthority("k1") {
		t.Error("authorities missing")
	}
	if h, _ := b.RefreshHint(); h != time.Minute {
		t.Errorf("refresh hint %v", h)
	}
	if s, _ := b.SequenceNumber(); s != 7 {
		t.Errorf("sequence %d", s)
	}
	for name, pb := range map[string]*types.Bundle{
		"nil":          nil,
		"bad td":       {TrustDomain: "Not Valid"},
		"bad x509":     {TrustDomain: "example.org", X509Authorities: []*types.X509Certificate{{Asn1: []byte("junk")}}},
		"bad jwt key":  {TrustDomain: "example.org", JwtAuthorities: []*types.JWTKey{{KeyId: "k", PublicKey: []byte("junk")}}},
		"jwt no keyid": {TrustDomain: "example.org", JwtAuthorities: []*types.JWTKey{{PublicKey: pub}}},
	} {
		if _, err := BundleFromProto(pb); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestStale(t *testing.T) {
	have := &cache.Entry{ID: "e", RevisionNumber: 2, CreatedAt: time.Unix(100, 0)}
	for _, tc := range []struct {
		rev   *entryv1.EntryRevision
		stale bool
	}{
		{&entryv1.EntryRevision{Id: "e", RevisionNumber: 2, CreatedAt: 100}, false},
		{&entryv1.EntryRevision{Id: "e", RevisionNumber: 2}, false}, // server without created_at
		{&entryv1.EntryRevision{Id: "e", RevisionNumber: 3, CreatedAt: 100}, true},
		{&entryv1.EntryRevision{Id: "e", RevisionNumber: 2, CreatedAt: 101}, true}, // re-created
	} {
		if got := stale(have, tc.rev); got != tc.stale {
			t.Errorf("stale(%v) = %v, want %v", tc.rev, got, tc.stale)
		}
	}
}

func TestServerID(t *testing.T) {
	if got := ServerID(spiffeid.RequireTrustDomainFromString("example.org")).String(); got != "spiffe://example.org/spire/server" {
		t.Errorf("ServerID = %s", got)
	}
}
