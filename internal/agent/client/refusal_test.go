package client_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"

	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/agent/client"
	"github.com/sigil-spiffe/sigil/internal/server/api/apistatus"
)

// spireDenied builds a denial the way spire-server does
// (pkg/common/errorutil.PermissionDenied): the same wire shape as
// sigil-server's apistatus.PermissionDenied, built independently here.
func spireDenied(reason types.PermissionDeniedDetails_Reason, msg string) error {
	st := status.New(codes.PermissionDenied, msg)
	d, err := st.WithDetails(&types.PermissionDeniedDetails{Reason: reason})
	if err != nil {
		panic(err)
	}
	return d.Err()
}

func TestRefusalOf(t *testing.T) {
	banned := apistatus.PermissionDenied(types.PermissionDeniedDetails_AGENT_BANNED, `agent "spiffe://example.org/a" is banned`)
	withOtherDetail, err := status.New(codes.PermissionDenied, "denied").WithDetails(&types.Status{Code: 7, Message: "x"})
	if err != nil {
		t.Fatal(err)
	}
	unknownReason := spireDenied(types.PermissionDeniedDetails_UNKNOWN, "denied")
	for _, tc := range []struct {
		name    string
		err     error
		kind    client.RefusalKind // 0: not a refusal
		revokes bool
		msg     string
	}{
		{name: "sigil banned", err: banned, kind: client.Banned, revokes: true, msg: `agent "spiffe://example.org/a" is banned`},
		{name: "sigil banned, wrapped twice", err: fmt.Errorf("session: %w", fmt.Errorf("watch entries: %w", banned)), kind: client.Banned, revokes: true, msg: `agent "spiffe://example.org/a" is banned`},
		{name: "sigil banned, joined", err: errors.Join(errors.New("bundle: ok"), fmt.Errorf("sign: %w", banned)), kind: client.Banned, revokes: true},
		{name: "spire banned", err: spireDenied(types.PermissionDeniedDetails_AGENT_BANNED, "agent is banned"), kind: client.Banned, revokes: true},
		{name: "sigil deleted", err: apistatus.PermissionDenied(types.PermissionDeniedDetails_AGENT_NOT_ATTESTED, "agent is not attested"), kind: client.Evicted, revokes: true},
		{name: "spire deleted", err: spireDenied(types.PermissionDeniedDetails_AGENT_NOT_ATTESTED, "agent is not attested"), kind: client.Evicted, revokes: true},
		{name: "serial not current", err: spireDenied(types.PermissionDeniedDetails_AGENT_NOT_ACTIVE, "expected serial"), kind: client.Evicted, revokes: true},
		{name: "must reattest", err: spireDenied(types.PermissionDeniedDetails_AGENT_MUST_REATTEST, "agent must reattest instead of renew"), kind: client.MustReattest},
		// Not refusals: nothing the operator decided.
		{name: "expired SVID (clock skew)", err: spireDenied(types.PermissionDeniedDetails_AGENT_EXPIRED, "agent SVID is expired")},
		{name: "unknown reason", err: unknownReason},
		{name: "permission denied without details", err: status.Error(codes.PermissionDenied, "authorization denied for method /spire.api.server.entry.v1.Entry/SyncAuthorizedEntries")},
		{name: "permission denied with another detail", err: withOtherDetail.Err()},
		{name: "unavailable", err: status.Error(codes.Unavailable, "connection error: desc = \"transport: Error while dialing: dial tcp 127.0.0.1:1: connect: connection refused\"")},
		{name: "server stopping", err: status.Error(codes.Unavailable, "server is stopping")},
		{name: "tls handshake", err: status.Error(codes.Unavailable, "connection error: desc = \"transport: authentication handshake failed: x509: certificate signed by unknown authority\"")},
		{name: "deadline", err: status.Error(codes.DeadlineExceeded, "context deadline exceeded")},
		{name: "internal", err: status.Error(codes.Internal, "unable to look up agent information")},
		{name: "unavailable carrying banned details", err: func() error {
			st, _ := status.New(codes.Unavailable, "x").WithDetails(&types.PermissionDeniedDetails{Reason: types.PermissionDeniedDetails_AGENT_BANNED})
			return st.Err()
		}()},
		{name: "context deadline", err: context.DeadlineExceeded},
		{name: "EOF", err: io.EOF},
		{name: "plain", err: errors.New("agent is banned")},
		{name: "x509", err: x509.UnknownAuthorityError{}},
		{name: "nil", err: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, ok := client.RefusalOf(tc.err)
			if ok != (tc.kind != 0) || r.Kind != tc.kind {
				t.Fatalf("RefusalOf = %+v, %v; want kind %v", r, ok, tc.kind)
			}
			if r.Revokes() != tc.revokes {
				t.Errorf("Revokes() = %v, want %v", r.Revokes(), tc.revokes)
			}
			if tc.msg != "" && r.Message != tc.msg {
				t.Errorf("Message = %q, want the server's %q", r.Message, tc.msg)
			}
		})
	}
}

// TestRefusalOverTheWire: the details survive a real gRPC exchange.
func TestRefusalOverTheWire(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, deniedHealth{})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
	r, ok := client.RefusalOf(fmt.Errorf("call: %w", err))
	if !ok || r.Kind != client.Evicted || r.Reason != "AGENT_NOT_ATTESTED" || r.Message != "agent is not attested" {
		t.Fatalf("RefusalOf(%v) = %+v, %v", err, r, ok)
	}
}

type deniedHealth struct {
	healthpb.UnimplementedHealthServer
}

func (deniedHealth) Check(context.Context, *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	return nil, apistatus.PermissionDenied(types.PermissionDeniedDetails_AGENT_NOT_ATTESTED, "agent is not attested")
}

func TestAttestationRefused(t *testing.T) {
	for _, tc := range []struct {
		name    string
		err     error
		refused bool
		msg     string
	}{
		{name: "unknown or used token", err: fmt.Errorf("node attestation: %w", fmt.Errorf("attest: %w", status.Error(codes.InvalidArgument, "failed to attest: join token does not exist or has already been used"))),
			refused: true, msg: "failed to attest: join token does not exist or has already been used"},
		{name: "expired token", err: status.Error(codes.InvalidArgument, "join token expired"), refused: true, msg: "join token expired"},
		{name: "attestor not enabled", err: status.Error(codes.FailedPrecondition, "error getting node attestor: could not find node attestor type \"join_token\""), refused: true},
		{name: "banned agent ID", err: status.Error(codes.PermissionDenied, "failed to attest: agent is banned"), refused: true},
		{name: "not implemented", err: status.Error(codes.Unimplemented, "unknown service"), refused: true},
		// Worth retrying.
		{name: "unreachable", err: status.Error(codes.Unavailable, "connection refused")},
		{name: "timeout", err: status.Error(codes.DeadlineExceeded, "context deadline exceeded")},
		{name: "rate limited", err: status.Error(codes.ResourceExhausted, "rejecting request due to attest agent rate limiting")},
		{name: "server error", err: status.Error(codes.Internal, "failed to sign X509 SVID")},
		{name: "canceled", err: status.Error(codes.Canceled, "context canceled")},
		{name: "unknown", err: status.Error(codes.Unknown, "?")},
		{name: "local error", err: errors.New("generate agent key: boom")},
		{name: "nil", err: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg, refused := client.AttestationRefused(tc.err)
			if refused != tc.refused {
				t.Fatalf("AttestationRefused = %v, want %v", refused, tc.refused)
			}
			if tc.msg != "" && msg != tc.msg {
				t.Errorf("message %q, want %q", msg, tc.msg)
			}
		})
	}
}

func TestReattestationRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    error
		kind   client.RefusalKind // 0: not a refusal of the node
		reason string
	}{
		{name: "proof refused", err: fmt.Errorf("attest: %w", status.Error(codes.PermissionDenied, "failed to attest: certificate revoked")),
			kind: client.AttestationDenied, reason: client.ReasonAttestationRefused},
		{name: "malformed data", err: status.Error(codes.InvalidArgument, "failed to attest: bad quote"), kind: client.AttestationDenied, reason: client.ReasonAttestationRefused},
		{name: "banned agent ID", err: status.Error(codes.PermissionDenied, "failed to attest: agent is banned"), kind: client.AttestationDenied, reason: client.ReasonAttestationRefused},
		{name: "with SPIRE's details", err: spireDenied(types.PermissionDeniedDetails_AGENT_BANNED, "agent is banned"), kind: client.Banned, reason: "AGENT_BANNED"},
		// The server's configuration, not the node: retried.
		{name: "attestor not configured", err: status.Error(codes.FailedPrecondition, "could not find node attestor type \"x509pop\"")},
		{name: "not implemented", err: status.Error(codes.Unimplemented, "unknown method")},
		{name: "unreachable", err: status.Error(codes.Unavailable, "connection refused")},
		{name: "server error", err: status.Error(codes.Internal, "failed to sign")},
		{name: "local error", err: errors.New("TPM unavailable")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, ok := client.ReattestationRefused(tc.err)
			if ok != (tc.kind != 0) || r.Kind != tc.kind || r.Reason != tc.reason {
				t.Fatalf("ReattestationRefused = %+v, %v; want kind %v reason %q", r, ok, tc.kind, tc.reason)
			}
			if ok && (!r.Revokes() || r.Message == "") {
				t.Errorf("refusal %+v does not revoke or has no message", r)
			}
		})
	}
}
