package trustbundle_test

import (
	"context"
	"crypto/x509"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/server/trustbundle"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

type store struct {
	mu    sync.Mutex
	certs []*x509.Certificate
	err   error
	reads int
}

func (s *store) GetBundle(_ context.Context, name string) (*datastore.Bundle, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reads++
	if s.err != nil {
		return nil, s.err
	}
	if name != td.Name() || s.certs == nil {
		return nil, datastore.ErrNotFound
	}
	b := &datastore.Bundle{TrustDomain: name}
	for _, c := range s.certs {
		b.X509Authorities = append(b.X509Authorities, datastore.X509Authority{ASN1: c.Raw})
	}
	return b, nil
}

func (s *store) set(certs ...*x509.Certificate) {
	s.mu.Lock()
	s.certs = certs
	s.mu.Unlock()
}

// TestSource: the local CA's authorities always, the stored ones once
// read (no duplicates, no expired ones), again after Changed, and kept
// when the store fails.
func TestSource(t *testing.T) {
	clk := clock.NewFake(time.Now())
	own := testca.New(t, testca.TrustDomain(td)).Cert
	other := testca.New(t, testca.TrustDomain(td)).Cert
	third := testca.New(t, testca.TrustDomain(td)).Cert
	expired := testca.New(t, testca.TrustDomain(td), testca.Expired()).Cert
	st := &store{}
	src, err := trustbundle.New(trustbundle.Config{TrustDomain: td, Store: st, Own: func() []*x509.Certificate { return []*x509.Certificate{own} }, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	want := func(when string, certs ...*x509.Certificate) {
		t.Helper()
		got := src.X509Authorities()
		if len(got) != len(certs) {
			t.Fatalf("%s: %d authorities, want %d", when, len(got), len(certs))
		}
		for i := range certs {
			if !got[i].Equal(certs[i]) {
				t.Fatalf("%s: authority %d differs", when, i)
			}
		}
	}
	want("before any read", own)
	if err := src.Refresh(context.Background()); err != nil {
		t.Fatalf("no stored bundle yet: %v", err)
	}
	want("no stored bundle", own)

	st.set(own, other, expired)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	eventually(t, func() bool { return len(src.X509Authorities()) == 2 })
	want("stored", own, other)

	st.set(own, other, third)
	src.Changed()
	eventually(t, func() bool { return len(src.X509Authorities()) == 3 })
	want("after Changed", own, other, third)

	st.mu.Lock()
	st.err, st.reads = errors.New("database down"), 0
	st.mu.Unlock()
	src.Changed()
	eventually(t, func() bool { st.mu.Lock(); defer st.mu.Unlock(); return st.reads > 0 })
	want("store failing", own, other, third)
}

func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 20s")
		}
		time.Sleep(time.Millisecond)
	}
}
