package ca_test

import (
	"context"
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sigil-spiffe/sigil/internal/ca"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore/sqlstore"
	"github.com/sigil-spiffe/sigil/internal/keys"
)

// TestWithSQLStore runs the CA on the real SQLite store and disk keys:
// restart persistence and a rotation step through its journal and bundles.
func TestWithSQLStore(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	clk := clock.NewFake(time.Now())
	open := func() (*ca.Manager, *sqlstore.Store) {
		t.Helper()
		st, err := sqlstore.Open(ctx, sqlstore.Config{DatabaseType: "sqlite3", ConnectionString: filepath.Join(dir, "datastore.sqlite3"), Clock: clk})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		km, err := keys.NewDisk(filepath.Join(dir, "keys"))
		if err != nil {
			t.Fatal(err)
		}
		m, err := ca.New(ca.Config{TrustDomain: td, CATTL: time.Hour, X509SVIDTTL: 5 * time.Minute, Keys: km, Journal: st, Bundles: st, Clock: clk, Log: quietLog()})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Init(ctx); err != nil {
			t.Fatal(err)
		}
		return m, st
	}
	verify := func(m *ca.Manager, st *sqlstore.Store, wantAuthorities int) *x509.Certificate {
		t.Helper()
		b, err := st.GetBundle(ctx, td.Name())
		if err != nil {
			t.Fatal(err)
		}
		if len(b.X509Authorities) != wantAuthorities || len(b.JWTKeys) != wantAuthorities {
			t.Fatalf("stored bundle: %d authorities, %d JWT keys; want %d each", len(b.X509Authorities), len(b.JWTKeys), wantAuthorities)
		}
		var roots []*x509.Certificate
		for _, a := range b.X509Authorities {
			c, err := x509.ParseCertificate(a.ASN1)
			if err != nil {
				t.Fatal(err)
			}
			roots = append(roots, c)
		}
		chain, err := m.SignX509SVID(ctx, ca.X509SVIDParams{SPIFFEID: workload, PublicKey: newPub(t)})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(td, roots), x509svid.WithTime(clk.Now())); err != nil {
			t.Fatalf("verify against the SQLite bundle: %v", err)
		}
		return chain[0]
	}

	m1, st1 := open()
	leaf1 := verify(m1, st1, 1)
	root1 := m1.X509Authorities()[0]
	if err := st1.Close(); err != nil {
		t.Fatal(err)
	}

	// Restart past half-life: same CA, plus a prepared one in the bundle.
	clk.Add(31 * time.Minute)
	m2, st2 := open()
	leaf2 := verify(m2, st2, 2)
	if leaf1.CheckSignatureFrom(root1) != nil || leaf2.CheckSignatureFrom(root1) != nil {
		t.Fatal("after restart SVIDs are not signed by the same CA")
	}
}
