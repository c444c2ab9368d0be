// Package ca_test benchmarks X509-SVID signing by the CA against a raw
// x509.CreateCertificate baseline with the same key type, so the CA's
// overhead can be reported as a ratio.
//
//	go test ./bench/ca -run '^$' -bench . -benchtime=200ms
package ca_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/ca"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/keys"
)

// store is a minimal in-memory journal + bundle store for the benchmark.
type store struct {
	mu      sync.Mutex
	journal map[string][]byte
	bundle  *datastore.Bundle
}

func (s *store) GetCAJournal(_ context.Context, name string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d, ok := s.journal[name]; ok {
		return d, nil
	}
	return nil, datastore.ErrNotFound
}

func (s *store) SetCAJournal(_ context.Context, name string, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.journal[name] = bytes.Clone(data)
	return nil
}

func (s *store) GetBundle(_ context.Context, td string) (*datastore.Bundle, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bundle == nil {
		return nil, datastore.ErrNotFound
	}
	b := *s.bundle
	return &b, nil
}

func (s *store) AppendBundle(_ context.Context, b *datastore.Bundle) (*datastore.Bundle, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bundle == nil {
		s.bundle = &datastore.Bundle{TrustDomain: b.TrustDomain}
	}
	s.bundle.X509Authorities = append(s.bundle.X509Authorities, b.X509Authorities...)
	s.bundle.JWTKeys = append(s.bundle.JWTKeys, b.JWTKeys...)
	s.bundle.SequenceNumber++
	c := *s.bundle
	return &c, nil
}

func (s *store) PruneBundle(context.Context, string, time.Time) (bool, error) { return false, nil }

func newManager(b *testing.B) *ca.Manager {
	b.Helper()
	st := &store{journal: map[string][]byte{}}
	m, err := ca.New(ca.Config{
		TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"),
		Keys:        keys.NewMemory(),
		Journal:     st,
		Bundles:     st,
		Log:         slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := m.Init(context.Background()); err != nil {
		b.Fatal(err)
	}
	return m
}

// pubKeys pre-generates workload public keys so key generation is not
// measured (neither benchmark pays for it).
func pubKeys(b *testing.B, n int) []crypto.PublicKey {
	b.Helper()
	out := make([]crypto.PublicKey, n)
	for i := range out {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		out[i] = k.Public()
	}
	return out
}

func BenchmarkSignX509SVID(b *testing.B) {
	m := newManager(b)
	pubs := pubKeys(b, 64)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			id := spiffeid.RequireFromString(fmt.Sprintf("spiffe://example.org/workload/%d", i%1000))
			_, err := m.SignX509SVID(ctx, ca.X509SVIDParams{SPIFFEID: id, PublicKey: pubs[i%len(pubs)], DNSNames: []string{"svc.example.org"}})
			if err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

// BenchmarkRawECDSACreateCertificate is the floor: x509.CreateCertificate of
// a comparable leaf template with an ECDSA P-256 CA key, nothing else.
func BenchmarkRawECDSACreateCertificate(b *testing.B) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{Organization: []string{"SPIFFE"}},
		NotBefore: now, NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		b.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(der)
	if err != nil {
		b.Fatal(err)
	}
	pubs := pubKeys(b, 64)
	uri, _ := url.Parse("spiffe://example.org/workload")
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			tmpl := &x509.Certificate{
				SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{Organization: []string{"SPIFFE"}},
				URIs: []*url.URL{uri}, NotBefore: now, NotAfter: now.Add(time.Hour),
				KeyUsage: x509.KeyUsageDigitalSignature, BasicConstraintsValid: true,
				ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			}
			if _, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, pubs[i%len(pubs)], caKey); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}
