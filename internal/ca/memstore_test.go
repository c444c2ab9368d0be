package ca_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"sync"
	"time"

	"github.com/sigil-spiffe/sigil/internal/datastore"
)

// memStore is a small in-memory CAJournalStore + ca.BundleStore following
// the datastore contract (append by DER / key ID, prune by expiry, sequence
// number bumped on every write).
type memStore struct {
	mu       sync.Mutex
	journals map[string][]byte
	bundles  map[string]*datastore.Bundle
	writes   int // bundle writes that changed something
}

func newMemStore() *memStore {
	return &memStore{journals: map[string][]byte{}, bundles: map[string]*datastore.Bundle{}}
}

func (s *memStore) GetCAJournal(_ context.Context, name string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.journals[name]
	if !ok {
		return nil, fmt.Errorf("journal %q: %w", name, datastore.ErrNotFound)
	}
	return bytes.Clone(d), nil
}

func (s *memStore) SetCAJournal(_ context.Context, name string, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.journals[name] = bytes.Clone(data)
	return nil
}

func (s *memStore) ListCAJournals(context.Context) (map[string][]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string][]byte, len(s.journals))
	for n, d := range s.journals {
		out[n] = bytes.Clone(d)
	}
	return out, nil
}

func cloneBundle(b *datastore.Bundle) *datastore.Bundle {
	c := *b
	c.X509Authorities = append([]datastore.X509Authority(nil), b.X509Authorities...)
	c.JWTKeys = append([]datastore.JWTKey(nil), b.JWTKeys...)
	return &c
}

func (s *memStore) GetBundle(_ context.Context, td string) (*datastore.Bundle, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.bundles[td]
	if !ok {
		return nil, fmt.Errorf("bundle %q: %w", td, datastore.ErrNotFound)
	}
	return cloneBundle(b), nil
}

func (s *memStore) AppendBundle(_ context.Context, in *datastore.Bundle) (*datastore.Bundle, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.bundles[in.TrustDomain]
	if !ok {
		b = &datastore.Bundle{TrustDomain: in.TrustDomain}
		s.bundles[in.TrustDomain] = b
	}
	changed := !ok
	for _, a := range in.X509Authorities {
		dup := false
		for _, h := range b.X509Authorities {
			dup = dup || bytes.Equal(h.ASN1, a.ASN1)
		}
		if !dup {
			b.X509Authorities = append(b.X509Authorities, a)
			changed = true
		}
	}
	for _, k := range in.JWTKeys {
		dup := false
		for _, h := range b.JWTKeys {
			dup = dup || h.KeyID == k.KeyID
		}
		if !dup {
			b.JWTKeys = append(b.JWTKeys, k)
			changed = true
		}
	}
	if changed {
		b.SequenceNumber++
		s.writes++
	}
	return cloneBundle(b), nil
}

func (s *memStore) PruneBundle(_ context.Context, td string, before time.Time) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.bundles[td]
	if !ok {
		return false, fmt.Errorf("bundle %q: %w", td, datastore.ErrNotFound)
	}
	changed := false
	var xs []datastore.X509Authority
	for _, a := range b.X509Authorities {
		c, err := x509.ParseCertificate(a.ASN1)
		if err != nil {
			return false, err
		}
		if c.NotAfter.Before(before) {
			changed = true
			continue
		}
		xs = append(xs, a)
	}
	var js []datastore.JWTKey
	for _, k := range b.JWTKeys {
		if k.ExpiresAt != 0 && time.Unix(k.ExpiresAt, 0).Before(before) {
			changed = true
			continue
		}
		js = append(js, k)
	}
	if changed {
		b.X509Authorities, b.JWTKeys = xs, js
		b.SequenceNumber++
		s.writes++
	}
	return changed, nil
}
