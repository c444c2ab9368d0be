package sqlstore

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/datastore"
)

func spiffeRel(td string) *datastore.FederationRelationship {
	return &datastore.FederationRelationship{TrustDomain: td, BundleEndpointURL: "https://" + td + ":8443",
		Profile: datastore.ProfileHTTPSSPIFFE, EndpointSPIFFEID: "spiffe://" + td + "/spire/server"}
}

func (x suite) TestFederationRelationshipCRUD(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	peer := &datastore.Bundle{TrustDomain: "peer.test", X509Authorities: []datastore.X509Authority{{ASN1: caCert(t, 1, t0.Add(time.Hour))}}}

	// Create with the bootstrap bundle: both stored.
	got, err := s.CreateFederationRelationship(ctx, spiffeRel("peer.test"), peer)
	if err != nil {
		t.Fatal(err)
	}
	want := spiffeRel("peer.test")
	want.CreatedAt, want.UpdatedAt = t0.Unix(), t0.Unix()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("created %+v, want %+v", got, want)
	}
	if b, err := s.GetBundle(ctx, "peer.test"); err != nil || b.SequenceNumber != 1 || len(b.X509Authorities) != 1 {
		t.Fatalf("bootstrap bundle = %+v, %v", b, err)
	}
	if got, err := s.GetFederationRelationship(ctx, "peer.test"); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("Get = %+v, %v", got, err)
	}

	// A duplicate changes nothing, not even the bundle given with it.
	other := &datastore.Bundle{TrustDomain: "peer.test", X509Authorities: []datastore.X509Authority{{ASN1: caCert(t, 2, t0.Add(time.Hour))}}}
	_, err = s.CreateFederationRelationship(ctx, spiffeRel("peer.test"), other)
	wantErr(t, err, datastore.ErrAlreadyExists)
	if b, _ := s.GetBundle(ctx, "peer.test"); b.SequenceNumber != 1 {
		t.Fatalf("duplicate create wrote the bundle: %+v", b)
	}

	// Without a bundle; https_web.
	web := &datastore.FederationRelationship{TrustDomain: "web.test", BundleEndpointURL: "https://web.test/bundle", Profile: datastore.ProfileHTTPSWeb}
	if _, err := s.CreateFederationRelationship(ctx, web, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetBundle(ctx, "web.test"); err == nil {
		t.Fatal("a relationship without a bundle created one")
	}

	// Update the URL only; the profile stays.
	f.clk.Add(time.Minute)
	upd, err := s.UpdateFederationRelationship(ctx, &datastore.FederationRelationship{TrustDomain: "peer.test", BundleEndpointURL: "https://new:1"},
		&datastore.FederationRelationshipMask{BundleEndpointURL: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if upd.BundleEndpointURL != "https://new:1" || upd.Profile != datastore.ProfileHTTPSSPIFFE || upd.EndpointSPIFFEID != "spiffe://peer.test/spire/server" ||
		upd.CreatedAt != t0.Unix() || upd.UpdatedAt != t0.Add(time.Minute).Unix() {
		t.Fatalf("updated = %+v", upd)
	}
	// Update the profile to https_web with a new bundle (nil mask: all).
	upd, err = s.UpdateFederationRelationship(ctx, &datastore.FederationRelationship{TrustDomain: "peer.test", BundleEndpointURL: "https://new:2", Profile: datastore.ProfileHTTPSWeb}, nil, other)
	if err != nil {
		t.Fatal(err)
	}
	if upd.Profile != datastore.ProfileHTTPSWeb || upd.EndpointSPIFFEID != "" || upd.BundleEndpointURL != "https://new:2" {
		t.Fatalf("updated = %+v", upd)
	}
	if b, _ := s.GetBundle(ctx, "peer.test"); b.SequenceNumber != 2 || !reflect.DeepEqual(b.X509Authorities, other.X509Authorities) {
		t.Fatalf("bundle after update = %+v", b)
	}
	// An update that would leave https_spiffe without an endpoint ID, or
	// of a missing relationship, changes nothing.
	_, err = s.UpdateFederationRelationship(ctx, &datastore.FederationRelationship{TrustDomain: "peer.test", Profile: datastore.ProfileHTTPSSPIFFE},
		&datastore.FederationRelationshipMask{Profile: true}, peer)
	if err == nil {
		t.Fatal("update to https_spiffe without an endpoint ID succeeded")
	}
	if b, _ := s.GetBundle(ctx, "peer.test"); b.SequenceNumber != 2 {
		t.Fatalf("a failed update wrote the bundle: %+v", b)
	}
	_, err = s.UpdateFederationRelationship(ctx, spiffeRel("none.test"), nil, nil)
	wantErr(t, err, datastore.ErrNotFound)

	// List, paged, in trust domain order.
	if _, err := s.CreateFederationRelationship(ctx, spiffeRel("a.test"), nil); err != nil {
		t.Fatal(err)
	}
	var names []string
	page := datastore.Page{Size: 2}
	for {
		frs, next, err := s.ListFederationRelationships(ctx, page)
		if err != nil {
			t.Fatal(err)
		}
		for _, fr := range frs {
			names = append(names, fr.TrustDomain)
		}
		if next == "" {
			break
		}
		page.Token = next
	}
	if !reflect.DeepEqual(names, []string{"a.test", "peer.test", "web.test"}) {
		t.Fatalf("listed %v", names)
	}
	_, _, err = s.ListFederationRelationships(ctx, datastore.Page{Size: 1, Token: "garbage"})
	wantErr(t, err, datastore.ErrInvalidPage)

	// Delete keeps the bundle.
	if err := s.DeleteFederationRelationship(ctx, "peer.test"); err != nil {
		t.Fatal(err)
	}
	wantErr(t, s.DeleteFederationRelationship(ctx, "peer.test"), datastore.ErrNotFound)
	_, err = s.GetFederationRelationship(ctx, "peer.test")
	wantErr(t, err, datastore.ErrNotFound)
	if _, err := s.GetBundle(ctx, "peer.test"); err != nil {
		t.Fatalf("delete removed the bundle: %v", err)
	}
}

func (x suite) TestFederationRelationshipRefused(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	cases := map[string]*datastore.FederationRelationship{
		"nil":                  nil,
		"no trust domain":      {BundleEndpointURL: "https://x", Profile: datastore.ProfileHTTPSWeb},
		"no URL":               {TrustDomain: "x.test", Profile: datastore.ProfileHTTPSWeb},
		"unknown profile":      {TrustDomain: "x.test", BundleEndpointURL: "https://x", Profile: "https_mtls"},
		"spiffe without ID":    {TrustDomain: "x.test", BundleEndpointURL: "https://x", Profile: datastore.ProfileHTTPSSPIFFE},
		"web with endpoint ID": {TrustDomain: "x.test", BundleEndpointURL: "https://x", Profile: datastore.ProfileHTTPSWeb, EndpointSPIFFEID: "spiffe://x.test/s"},
	}
	for name, fr := range cases {
		if _, err := s.CreateFederationRelationship(ctx, fr, nil); err == nil {
			t.Errorf("%s: created", name)
		}
	}
	// A bundle of another trust domain.
	b := &datastore.Bundle{TrustDomain: "other.test", X509Authorities: []datastore.X509Authority{{ASN1: caCert(t, 1, t0.Add(time.Hour))}}}
	if _, err := s.CreateFederationRelationship(ctx, spiffeRel("x.test"), b); err == nil {
		t.Error("created with another trust domain's bundle")
	}
	if frs, _, _ := s.ListFederationRelationships(ctx, datastore.Page{}); len(frs) != 0 {
		t.Errorf("refused creates stored %+v", frs)
	}
}

func (x suite) TestBundleRefreshes(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	if err := s.SetBundleRefreshed(ctx, "a.test", t0); err != nil {
		t.Fatal(err)
	}
	if err := s.SetBundleRefreshed(ctx, "a.test", t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.SetBundleRefreshed(ctx, "b.test", t0); err != nil {
		t.Fatal(err)
	}
	f.reopen(t)
	got, err := f.store.BundleRefreshes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got["a.test"].Equal(t0.Add(time.Hour)) || !got["b.test"].Equal(t0) {
		t.Fatalf("refreshes = %v", got)
	}
}
