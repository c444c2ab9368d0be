package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/ca"
	"github.com/sigil-spiffe/sigil/internal/clock"
)

// serverSVID keeps the server's own X509-SVID (spiffe://<td>/spire/server),
// which it presents to agents on the TCP endpoint, and renews it at half
// life. The key lives only in memory.
type serverSVID struct {
	id  spiffeid.ID
	ca  *ca.Manager
	clk clock.Clock
	log *slog.Logger

	mu   sync.RWMutex
	cert *tls.Certificate
}

func newServerSVID(td spiffeid.TrustDomain, m *ca.Manager, clk clock.Clock, log *slog.Logger) (*serverSVID, error) {
	id, err := spiffeid.FromSegments(td, "spire", "server")
	if err != nil {
		return nil, fmt.Errorf("server SPIFFE ID: %w", err)
	}
	return &serverSVID{id: id, ca: m, clk: clk, log: log}, nil
}

// rotate signs a fresh SVID.
func (s *serverSVID) rotate(ctx context.Context) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("server SVID key: %w", err)
	}
	chain, err := s.ca.SignX509SVID(ctx, ca.X509SVIDParams{SPIFFEID: s.id, PublicKey: key.Public()})
	if err != nil {
		return fmt.Errorf("sign server SVID: %w", err)
	}
	cert := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	s.mu.Lock()
	s.cert = cert
	s.mu.Unlock()
	s.log.Debug("Server SVID rotated", "spiffe_id", s.id.String(), "expires_at", chain[0].NotAfter)
	return nil
}

// Get returns the current certificate.
func (s *serverSVID) Get() (*tls.Certificate, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.cert == nil {
		return nil, errors.New("server SVID not ready")
	}
	return s.cert, nil
}

// Run renews the SVID at half its lifetime until ctx ends.
func (s *serverSVID) Run(ctx context.Context) error {
	for {
		c, err := s.Get()
		wait := 5 * time.Second
		if err == nil {
			nb, na := c.Leaf.NotBefore, c.Leaf.NotAfter
			wait = max(nb.Add(na.Sub(nb)/2).Sub(s.clk.Now()), time.Second)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.clk.After(wait):
		}
		if err := s.rotate(ctx); err != nil {
			s.log.Error("Could not rotate server SVID", "error", err)
		}
	}
}
