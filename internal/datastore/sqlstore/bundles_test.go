package sqlstore

import (
	"context"
	"crypto/x509"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// caCert returns the DER of a self-signed CA certificate valid until notAfter.
func caCert(t *testing.T, serial int64, notAfter time.Time) []byte {
	t.Helper()
	return testca.SelfSignedDER(t, testca.Serial(serial), testca.Subject("test CA"),
		testca.Validity(notAfter.Add(-48*time.Hour), notAfter), testca.KeyUsage(x509.KeyUsageCertSign))
}

func (x suite) TestBundleCRUD(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	ca1 := caCert(t, 1, t0.Add(time.Hour))
	b := &datastore.Bundle{
		TrustDomain:     "example.org",
		X509Authorities: []datastore.X509Authority{{ASN1: ca1}},
		JWTKeys:         []datastore.JWTKey{{KeyID: "k1", PublicKey: []byte("pk1"), ExpiresAt: 100, Tainted: true}},
		RefreshHint:     300,
	}
	created, err := s.CreateBundle(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if created.SequenceNumber != 1 {
		t.Fatalf("sequence after create = %d, want 1", created.SequenceNumber)
	}
	want := *b
	want.SequenceNumber = 1
	if !reflect.DeepEqual(created, &want) {
		t.Fatalf("created = %+v, want %+v", created, &want)
	}
	got, err := s.GetBundle(ctx, "example.org")
	if err != nil || !reflect.DeepEqual(got, &want) {
		t.Fatalf("GetBundle = %+v, %v", got, err)
	}
	_, err = s.CreateBundle(ctx, b)
	wantErr(t, err, datastore.ErrAlreadyExists)
	_, err = s.GetBundle(ctx, "other.org")
	wantErr(t, err, datastore.ErrNotFound)

	// Update replaces and bumps.
	upd, err := s.UpdateBundle(ctx, &datastore.Bundle{TrustDomain: "example.org", X509Authorities: []datastore.X509Authority{{ASN1: ca1, Tainted: true}}})
	if err != nil {
		t.Fatal(err)
	}
	if upd.SequenceNumber != 2 || len(upd.JWTKeys) != 0 || !upd.X509Authorities[0].Tainted || upd.RefreshHint != 0 {
		t.Fatalf("updated = %+v", upd)
	}
	_, err = s.UpdateBundle(ctx, &datastore.Bundle{TrustDomain: "other.org"})
	wantErr(t, err, datastore.ErrNotFound)

	// A higher caller sequence (a federated bundle's own) is kept; a lower
	// one never moves the number backwards.
	set, err := s.SetBundle(ctx, &datastore.Bundle{TrustDomain: "example.org", X509Authorities: []datastore.X509Authority{{ASN1: ca1}}, SequenceNumber: 10})
	if err != nil || set.SequenceNumber != 10 {
		t.Fatalf("SetBundle seq = %+v, %v", set, err)
	}
	set, err = s.SetBundle(ctx, &datastore.Bundle{TrustDomain: "example.org", X509Authorities: []datastore.X509Authority{{ASN1: ca1}}, SequenceNumber: 3})
	if err != nil || set.SequenceNumber != 11 {
		t.Fatalf("SetBundle with lower seq = %+v, %v", set, err)
	}
	// SetBundle creates too.
	fed, err := s.SetBundle(ctx, &datastore.Bundle{TrustDomain: "fed.org", JWTKeys: []datastore.JWTKey{{KeyID: "f", PublicKey: []byte("x")}}})
	if err != nil || fed.SequenceNumber != 1 {
		t.Fatalf("SetBundle create = %+v, %v", fed, err)
	}

	for _, td := range []string{"c.org", "a.org", "b.org"} {
		if _, err := s.CreateBundle(ctx, &datastore.Bundle{TrustDomain: td}); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.CountBundles(ctx); err != nil || n != 5 {
		t.Fatalf("CountBundles = %d, %v", n, err)
	}
	var tds []string
	tok := ""
	for {
		page, next, err := s.ListBundles(ctx, datastore.Page{Size: 2, Token: tok})
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range page {
			tds = append(tds, b.TrustDomain)
		}
		if next == "" {
			break
		}
		tok = next
	}
	if wantTDs := []string{"a.org", "b.org", "c.org", "example.org", "fed.org"}; !reflect.DeepEqual(tds, wantTDs) {
		t.Fatalf("ListBundles = %v, want %v", tds, wantTDs)
	}

	if err := s.DeleteBundle(ctx, "c.org"); err != nil {
		t.Fatal(err)
	}
	wantErr(t, s.DeleteBundle(ctx, "c.org"), datastore.ErrNotFound)

	if _, err := s.CreateBundle(ctx, &datastore.Bundle{}); err == nil {
		t.Fatal("bundle without trust domain accepted")
	}
	if _, err := s.CreateBundle(ctx, &datastore.Bundle{TrustDomain: "z.org", JWTKeys: []datastore.JWTKey{{PublicKey: []byte("x")}}}); err == nil {
		t.Fatal("JWT key without key ID accepted")
	}

	evs, err := s.ListBundleEvents(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	// create, update, set, set, create fed, 3 creates, delete
	if len(evs) != 9 || evs[8].TrustDomain != "c.org" {
		t.Fatalf("bundle events: %v", evs)
	}
	if last, _ := s.LastBundleEventID(ctx); last != evs[8].ID {
		t.Fatalf("LastBundleEventID = %d", last)
	}
}

func (x suite) TestAppendBundle(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	ca1 := caCert(t, 1, t0.Add(time.Hour))
	ca2 := caCert(t, 2, t0.Add(2*time.Hour))
	k1 := datastore.JWTKey{KeyID: "k1", PublicKey: []byte("pk1")}
	k2 := datastore.JWTKey{KeyID: "k2", PublicKey: []byte("pk2")}

	// Append creates an absent bundle.
	b, err := s.AppendBundle(ctx, &datastore.Bundle{TrustDomain: "td", X509Authorities: []datastore.X509Authority{{ASN1: ca1}}, JWTKeys: []datastore.JWTKey{k1}, RefreshHint: 60})
	if err != nil || b.SequenceNumber != 1 || b.RefreshHint != 60 {
		t.Fatalf("append-create = %+v, %v", b, err)
	}
	// Only new material is added; duplicates by DER / key ID are dropped
	// (a different key under an existing key ID does not replace it).
	b, err = s.AppendBundle(ctx, &datastore.Bundle{TrustDomain: "td",
		X509Authorities: []datastore.X509Authority{{ASN1: ca1}, {ASN1: ca2}, {ASN1: ca2}},
		JWTKeys:         []datastore.JWTKey{{KeyID: "k1", PublicKey: []byte("other")}, k2, k2}, RefreshHint: 5})
	if err != nil {
		t.Fatal(err)
	}
	want := &datastore.Bundle{TrustDomain: "td", X509Authorities: []datastore.X509Authority{{ASN1: ca1}, {ASN1: ca2}},
		JWTKeys: []datastore.JWTKey{k1, k2}, RefreshHint: 60, SequenceNumber: 2}
	if !reflect.DeepEqual(b, want) {
		t.Fatalf("append = %+v\nwant %+v", b, want)
	}
	// Nothing new: no write, no bump, no event.
	before, _ := s.LastBundleEventID(ctx)
	b, err = s.AppendBundle(ctx, &datastore.Bundle{TrustDomain: "td", X509Authorities: []datastore.X509Authority{{ASN1: ca2}}, JWTKeys: []datastore.JWTKey{k1}})
	if err != nil || !reflect.DeepEqual(b, want) {
		t.Fatalf("no-op append = %+v, %v", b, err)
	}
	if after, _ := s.LastBundleEventID(ctx); after != before {
		t.Fatal("no-op append recorded an event")
	}
	if got, _ := s.GetBundle(ctx, "td"); !reflect.DeepEqual(got, want) {
		t.Fatalf("stored = %+v", got)
	}
}

func (x suite) TestPruneBundle(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	old := caCert(t, 1, t0.Add(time.Hour))
	cur := caCert(t, 2, t0.Add(3*time.Hour))
	_, err := s.CreateBundle(ctx, &datastore.Bundle{TrustDomain: "td",
		X509Authorities: []datastore.X509Authority{{ASN1: old}, {ASN1: cur}},
		JWTKeys: []datastore.JWTKey{
			{KeyID: "expired", PublicKey: []byte("a"), ExpiresAt: t0.Add(time.Hour).Unix()},
			{KeyID: "valid", PublicKey: []byte("b"), ExpiresAt: t0.Add(3 * time.Hour).Unix()},
			{KeyID: "forever", PublicKey: []byte("c")},
		}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.PruneBundle(ctx, "missing", t0)
	wantErr(t, err, datastore.ErrNotFound)

	changed, err := s.PruneBundle(ctx, "td", t0)
	if err != nil || changed {
		t.Fatalf("prune at t0 = %v, %v; want no change", changed, err)
	}
	changed, err = s.PruneBundle(ctx, "td", t0.Add(2*time.Hour))
	if err != nil || !changed {
		t.Fatalf("prune = %v, %v; want a change", changed, err)
	}
	b, _ := s.GetBundle(ctx, "td")
	if len(b.X509Authorities) != 1 || !reflect.DeepEqual(b.X509Authorities[0].ASN1, cur) {
		t.Fatalf("authorities after prune: %d", len(b.X509Authorities))
	}
	var kids []string
	for _, k := range b.JWTKeys {
		kids = append(kids, k.KeyID)
	}
	if !reflect.DeepEqual(kids, []string{"valid", "forever"}) {
		t.Fatalf("JWT keys after prune: %v", kids)
	}
	if b.SequenceNumber != 2 {
		t.Fatalf("sequence after prune = %d, want 2", b.SequenceNumber)
	}

	// Pruning the last X.509 authority is refused and changes nothing.
	changed, err = s.PruneBundle(ctx, "td", t0.Add(4*time.Hour))
	wantErr(t, err, ErrPruneWouldEmptyBundle)
	if changed {
		t.Fatal("refused prune reported a change")
	}
	after, _ := s.GetBundle(ctx, "td")
	if !reflect.DeepEqual(after, b) {
		t.Fatal("refused prune changed the bundle")
	}
}

// TestBundleSequenceNumberOutOfRange: a sequence number the INTEGER column
// cannot hold is ErrOutOfRange and changes nothing.
func (x suite) TestBundleSequenceNumberOutOfRange(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	if _, err := s.SetBundle(ctx, &datastore.Bundle{TrustDomain: "fed.org", SequenceNumber: 1 << 63}); !errors.Is(err, datastore.ErrOutOfRange) {
		t.Fatalf("set with 2^63: %v, want ErrOutOfRange", err)
	}
	if _, err := s.GetBundle(ctx, "fed.org"); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("refused set stored the bundle: %v", err)
	}
	b, err := s.SetBundle(ctx, &datastore.Bundle{TrustDomain: "fed.org", SequenceNumber: 1<<63 - 1})
	if err != nil || b.SequenceNumber != 1<<63-1 {
		t.Fatalf("set with 2^63-1: %+v, %v", b, err)
	}
	// The next write would need 2^63.
	if _, err := s.UpdateBundle(ctx, &datastore.Bundle{TrustDomain: "fed.org", RefreshHint: 5}); !errors.Is(err, datastore.ErrOutOfRange) {
		t.Fatalf("update past 2^63-1: %v, want ErrOutOfRange", err)
	}
	got, err := s.GetBundle(ctx, "fed.org")
	if err != nil || got.SequenceNumber != 1<<63-1 || got.RefreshHint != 0 {
		t.Fatalf("refused update changed the bundle: %+v, %v", got, err)
	}
}
