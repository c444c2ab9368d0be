package endpoints_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/server/ratelimit"
)

// fromIP dials from a chosen loopback source address.
func fromIP(ip string) grpc.DialOption {
	return grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		return d.DialContext(ctx, "tcp", addr)
	})
}

func TestFailedAttestationsLimitedPerIP(t *testing.T) {
	h := newHarness(t, harnessOpts{rateLimit: ratelimit.Config{Attestation: true, Signing: true, FailureBurst: 5, FailureRate: 1}})
	conn := h.anonConn(fromIP("127.0.0.1"))
	key := newKey(t)

	// A fleet behind one address: many successful attestations, no throttling.
	for i := 0; i < 30; i++ {
		if _, err := h.attest(conn, h.createToken(&agentv1.CreateJoinTokenRequest{}), key); err != nil {
			t.Fatalf("successful attestation %d throttled: %v", i, err)
		}
	}
	// Guessing tokens: the burst of failures is allowed, then the address is limited.
	for i := 0; i < 5; i++ {
		_, err := h.attest(conn, "guess", key)
		requireCode(t, err, codes.InvalidArgument)
	}
	good := h.createToken(&agentv1.CreateJoinTokenRequest{})
	_, err := h.attest(conn, good, key)
	requireCode(t, err, codes.ResourceExhausted)
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "failed attestations") {
		t.Fatalf("limit message %q does not explain the limit", msg)
	}
	// Other addresses are unaffected.
	if _, err := h.attest(h.anonConn(fromIP("127.0.0.2")), h.createToken(&agentv1.CreateJoinTokenRequest{}), key); err != nil {
		t.Fatalf("attestation from another address limited: %v", err)
	}
	// The limited attempt did not consume the token; after the refill it works.
	h.rlClk.Add(time.Second)
	if _, err := h.attest(conn, good, key); err != nil {
		t.Fatalf("after refill: %v", err)
	}
}

func TestAttestationLimitDisabled(t *testing.T) {
	h := newHarness(t, harnessOpts{rateLimit: ratelimit.Config{FailureBurst: 1, FailureRate: 0.001}})
	conn := h.anonConn()
	key := newKey(t)
	for i := 0; i < 5; i++ {
		_, err := h.attest(conn, "guess", key)
		requireCode(t, err, codes.InvalidArgument)
	}
	if _, err := h.attest(conn, h.createToken(&agentv1.CreateJoinTokenRequest{}), key); err != nil {
		t.Fatalf("disabled limit applied: %v", err)
	}
}
