package ca_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/ca"
	"github.com/sigil-spiffe/sigil/internal/keys"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestShortCATTLWarning(t *testing.T) {
	for _, tc := range []struct {
		caTTL, svidTTL time.Duration
		warn           bool
	}{{time.Hour, 30 * time.Minute, true}, {6 * time.Hour, time.Hour, false}, {0, 0, false}} {
		var buf syncBuf
		newEnv(t, nil, nil, nil, func(c *ca.Config) {
			c.CATTL, c.X509SVIDTTL = tc.caTTL, tc.svidTTL
			c.Log = slog.New(slog.NewTextHandler(&buf, nil))
		})
		out := buf.String()
		got := strings.Contains(out, "level=WARN") && strings.Contains(out, "less than 6 times the X509-SVID TTL")
		if got != tc.warn {
			t.Errorf("ca_ttl %s, svid ttl %s: warning=%v, want %v\n%s", tc.caTTL, tc.svidTTL, got, tc.warn, out)
		}
	}
}

func TestNoSecretsInLogs(t *testing.T) {
	var buf syncBuf
	e := newEnv(t, nil, nil, nil, func(c *ca.Config) {
		c.Log = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	tok, err := e.m.SignJWTSVID(context.Background(), ca.JWTSVIDParams{SPIFFEID: workload, Audience: []string{"a"}, TTL: 1000 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	sig := tok[strings.LastIndex(tok, ".")+1:]
	if strings.Contains(buf.String(), sig) || strings.Contains(buf.String(), "PRIVATE KEY") {
		t.Fatal("a token or key reached the log")
	}
	if !strings.Contains(buf.String(), "capped") {
		t.Fatal("capping a JWT-SVID lifetime was not logged at debug level")
	}
}

// flakyUpstream fails while fail is set.
type flakyUpstream struct {
	mu   sync.Mutex
	fail bool
	up   ca.UpstreamAuthority
}

func (f *flakyUpstream) MintX509CA(ctx context.Context, csr []byte, ttl time.Duration) ([]*x509.Certificate, []*x509.Certificate, error) {
	f.mu.Lock()
	fail := f.fail
	f.mu.Unlock()
	if fail {
		return nil, nil, errors.New("upstream unavailable")
	}
	return f.up.MintX509CA(ctx, csr, ttl)
}

func TestUpstreamFailure(t *testing.T) {
	store := newMemStore()
	up := &flakyUpstream{fail: true, up: selfSignedUpstream(t)}
	cfg := ca.Config{TrustDomain: td, Keys: keys.NewMemory(), Journal: store, Bundles: store, Upstream: up, Log: quietLog()}
	m, err := ca.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Init(context.Background()); err == nil {
		t.Fatal("Init succeeded although the upstream failed")
	}
	if _, err := m.SignX509SVID(context.Background(), ca.X509SVIDParams{SPIFFEID: workload, PublicKey: newPub(t)}); err == nil {
		t.Fatal("signing without a CA succeeded")
	}
	up.mu.Lock()
	up.fail = false
	up.mu.Unlock()
	if err := m.Init(context.Background()); err != nil {
		t.Fatalf("Init after the upstream recovered: %v", err)
	}
	if _, err := m.SignX509SVID(context.Background(), ca.X509SVIDParams{SPIFFEID: workload, PublicKey: newPub(t)}); err != nil {
		t.Fatal(err)
	}
}

// badUpstream returns a certificate that is not for the CSR's key.
type badUpstream struct{ up ca.UpstreamAuthority }

func (b badUpstream) MintX509CA(ctx context.Context, _ []byte, ttl time.Duration) ([]*x509.Certificate, []*x509.Certificate, error) {
	return b.up.MintX509CA(ctx, otherCSR, ttl)
}

var otherCSR []byte

func TestUpstreamResultIsChecked(t *testing.T) {
	store := newMemStore()
	otherCSR = makeCSR(t)
	m, err := ca.New(ca.Config{TrustDomain: td, Keys: keys.NewMemory(), Journal: store, Bundles: store, Upstream: badUpstream{selfSignedUpstream(t)}, Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Init(context.Background()); err == nil || !strings.Contains(err.Error(), "not for the CA key") {
		t.Fatalf("Init with a mismatched upstream certificate: %v", err)
	}
}
