package endpoints

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/server/ratelimit"
)

type limitCounter struct {
	noMetrics
	limits []string
}

func (c *limitCounter) RateLimited(limit string) { c.limits = append(c.limits, limit) }

// A request refused by a full work gate is ResourceExhausted and counted
// under its limit; one that gets a slot is not.
func TestRateLimitRejectionCounted(t *testing.T) {
	m := &limitCounter{}
	e, err := New(Config{
		TCPAddr: &net.TCPAddr{}, SocketPath: "/unused", TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"),
		ServerSVID: func() (*tls.Certificate, error) { return nil, errors.New("none") },
		Bundle:     func() []*x509.Certificate { return nil }, Nodes: noNodes{}, Register: func(*grpc.Server) {}, Metrics: m,
		RateLimit: ratelimit.Config{Attestation: true, Signing: true, MaxConcurrent: 1, MaxWait: time.Nanosecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s := stages{e: e}
	release, err := s.Work(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Work(ctx); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("second attestation work slot: %v, want ResourceExhausted", err)
	}
	release()
	sign, err := e.limiter.AcquireSign(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ws := &wrappedStream{ctx: ctx, ep: e, acquire: e.limiter.AcquireSign, ServerStream: nopStream{}}
	if err := ws.RecvMsg(new(int)); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("signing slot while held: %v, want ResourceExhausted", err)
	}
	sign()
	if len(m.limits) != 2 || m.limits[0] != "attestation" || m.limits[1] != "signing" {
		t.Fatalf("counted %v, want [attestation signing]", m.limits)
	}
}

type noNodes struct{ NodeStore }

// nopStream is a server stream whose RecvMsg receives nothing, at once.
type nopStream struct{ grpc.ServerStream }

func (nopStream) RecvMsg(any) error { return nil }
