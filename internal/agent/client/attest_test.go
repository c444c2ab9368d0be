package client_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/agent/client"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// challengeServer is an agent/v1 server speaking SPIRE's AttestAgent
// exchange: it checks the attestation data, sends its challenges one by
// one and checks each answer (the challenge reversed), then returns an
// SVID for the CSR's key or the refusal it was given.
type challengeServer struct {
	agentv1.UnimplementedAgentServer
	// typ and payload are the attestation data expected (default
	// "test_cr", "hello").
	typ, payload string
	challenges   [][]byte
	endless      bool  // challenge for ever
	refuse       error // returned after the last answer
	ca           *testca.CA
	// seen receives what the server received, or how the stream ended.
	seen chan string
	t    testing.TB
}

func (s *challengeServer) AttestAgent(stream agentv1.Agent_AttestAgentServer) error {
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	p := req.GetParams()
	typ, payload := s.typ, s.payload
	if typ == "" {
		typ, payload = "test_cr", "hello"
	}
	if p.GetData().GetType() != typ || !bytes.Equal(p.GetData().GetPayload(), []byte(payload)) {
		return status.Errorf(codes.InvalidArgument, "unexpected attestation data %q %q", p.GetData().GetType(), p.GetData().GetPayload())
	}
	csr, err := x509.ParseCertificateRequest(p.GetParams().GetCsr())
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "bad CSR: %v", err)
	}
	s.seen <- "params"
	for i := 0; s.endless || i < len(s.challenges); i++ {
		c := []byte(fmt.Sprintf("nonce-%d", i))
		if !s.endless {
			c = s.challenges[i]
		}
		if err := stream.Send(&agentv1.AttestAgentResponse{Step: &agentv1.AttestAgentResponse_Challenge{Challenge: c}}); err != nil {
			return err
		}
		resp, err := stream.Recv()
		if err != nil {
			s.seen <- "stream ended: " + status.Code(err).String()
			return err
		}
		if !bytes.Equal(resp.GetChallengeResponse(), reverse(c)) {
			return status.Errorf(codes.PermissionDenied, "wrong answer to challenge %d", i)
		}
		s.seen <- "answer " + string(resp.GetChallengeResponse())
	}
	if s.refuse != nil {
		return s.refuse
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		URIs:         []*url.URL{spiffeid.RequireFromPath(s.ca.TD, "/spire/agent/test_cr/node1").URL()},
		NotBefore:    time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	cert := testca.Sign(s.t, leaf, s.ca.Cert, csr.PublicKey, s.ca.Key)
	return stream.Send(&agentv1.AttestAgentResponse{Step: &agentv1.AttestAgentResponse_Result_{Result: &agentv1.AttestAgentResponse_Result{
		Svid:         &types.X509SVID{CertChain: testca.DER(cert)},
		Reattestable: true,
	}}})
}

func reverse(b []byte) []byte {
	r := make([]byte, len(b))
	for i := range b {
		r[len(b)-1-i] = b[i]
	}
	return r
}

// reverser answers each challenge with the challenge reversed, or with
// failWith.
type reverser struct {
	failWith error
	answered int
}

func (r *reverser) Payload() []byte { return []byte("hello") }

func (r *reverser) Respond(_ context.Context, c []byte) ([]byte, error) {
	if r.failWith != nil {
		return nil, r.failWith
	}
	r.answered++
	return reverse(c), nil
}

// startChallengeServer serves s over TLS on loopback, as
// spiffe://example.org/spire/server, and returns a client that
// authenticates it.
func startChallengeServer(t *testing.T, s *challengeServer) *client.Client {
	t.Helper()
	addr := serveChallenges(t, s)
	cl, err := client.Dial(client.Config{Addr: addr, TrustDomain: s.ca.TD, Bundle: s.ca.Roots})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	return cl
}

// serveChallenges serves s over TLS on loopback, as
// spiffe://example.org/spire/server (its CA is s.ca when set, else a new
// one), and returns its address.
func serveChallenges(t *testing.T, s *challengeServer) string {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	if s.ca == nil {
		s.ca = testca.New(t, testca.TrustDomain(td))
	}
	s.t = t
	if s.seen == nil {
		s.seen = make(chan string, 100)
	}
	return serveTLS(t, s.ca, func(srv *grpc.Server) { agentv1.RegisterAgentServer(srv, s) })
}

// serveTLS serves the services register adds over TLS on loopback, as
// spiffe://<ca's trust domain>/spire/server with an SVID of ca, until the
// test ends, and returns the address.
func serveTLS(t *testing.T, ca *testca.CA, register func(*grpc.Server)) string {
	t.Helper()
	serverSVID := ca.SVID(t, client.ServerID(ca.TD))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{{Certificate: testca.DER(serverSVID.Certificates...), PrivateKey: serverSVID.PrivateKey}}})))
	register(srv)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func drain(ch chan string) []string {
	var out []string
	for {
		select {
		case s := <-ch:
			out = append(out, s)
		default:
			return out
		}
	}
}

// TestAttestAgentChallenges: the data and CSR go first, every challenge is
// answered by the session, and the SVID and the server's reattestable flag
// come back.
func TestAttestAgentChallenges(t *testing.T) {
	s := &challengeServer{challenges: [][]byte{[]byte("first"), []byte("second")}}
	cl := startChallengeServer(t, s)
	key, csr := testca.CSR(t)
	r := &reverser{}
	a, err := cl.AttestAgent(context.Background(), "test_cr", r, csr)
	if err != nil {
		t.Fatalf("AttestAgent: %v", err)
	}
	if !a.Reattestable {
		t.Error("Reattestable = false, the server said true")
	}
	if len(a.Chain) != 1 || !a.Chain[0].PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Fatalf("chain %v does not certify the CSR's key", a.Chain)
	}
	if r.answered != 2 {
		t.Errorf("the session answered %d challenges, want 2", r.answered)
	}
	if got, want := fmt.Sprint(drain(s.seen)), "[params answer tsrif answer dnoces]"; got != want {
		t.Errorf("server saw %s, want %s", got, want)
	}
}

// TestAttestAgentNoChallenge: an attestor without challenges (join_token's
// shape) gets its SVID on the first answer; Respond is never called.
func TestAttestAgentNoChallenge(t *testing.T) {
	s := &challengeServer{}
	cl := startChallengeServer(t, s)
	_, csr := testca.CSR(t)
	r := &reverser{failWith: errors.New("must not be called")}
	if _, err := cl.AttestAgent(context.Background(), "test_cr", r, csr); err != nil {
		t.Fatalf("AttestAgent: %v", err)
	}
}

// TestAttestAgentSessionFails: a session that cannot answer ends the
// exchange (the server sees the stream cancelled), and the error is the
// agent's own, not a refusal by the server.
func TestAttestAgentSessionFails(t *testing.T) {
	s := &challengeServer{challenges: [][]byte{[]byte("x")}}
	cl := startChallengeServer(t, s)
	_, csr := testca.CSR(t)
	boom := errors.New("TPM unavailable")
	_, err := cl.AttestAgent(context.Background(), "test_cr", &reverser{failWith: boom}, csr)
	if !errors.Is(err, boom) {
		t.Fatalf("AttestAgent error %v does not wrap the session's", err)
	}
	if msg, refused := client.AttestationRefused(err); refused {
		t.Errorf("a local failure counts as the server's refusal (%q)", msg)
	}
	select {
	case got := <-s.seen:
		if got != "params" {
			t.Fatalf("server saw %q first", got)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("server saw nothing")
	}
	select {
	case got := <-s.seen:
		if got != "stream ended: Canceled" {
			t.Errorf("server saw %q, want the stream cancelled", got)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the server's stream did not end")
	}
}

// TestAttestAgentRefused: a refusal after the answers is the server's
// status, which AttestationRefused recognises.
func TestAttestAgentRefused(t *testing.T) {
	s := &challengeServer{challenges: [][]byte{[]byte("x")}, refuse: status.Error(codes.PermissionDenied, "failed to attest: certificate revoked")}
	cl := startChallengeServer(t, s)
	_, csr := testca.CSR(t)
	_, err := cl.AttestAgent(context.Background(), "test_cr", &reverser{}, csr)
	msg, refused := client.AttestationRefused(err)
	if !refused || msg != "failed to attest: certificate revoked" {
		t.Fatalf("AttestationRefused(%v) = %q, %v", err, msg, refused)
	}
}

// TestAttestAgentEndlessChallenges: the agent stops answering after
// MaxChallenges.
func TestAttestAgentEndlessChallenges(t *testing.T) {
	s := &challengeServer{endless: true}
	cl := startChallengeServer(t, s)
	_, csr := testca.CSR(t)
	r := &reverser{}
	_, err := cl.AttestAgent(context.Background(), "test_cr", r, csr)
	if err == nil {
		t.Fatal("AttestAgent succeeded")
	}
	if r.answered != client.MaxChallenges {
		t.Errorf("answered %d challenges, want %d (error %v)", r.answered, client.MaxChallenges, err)
	}
}

// TestAttestJoinTokenRefusesChallenge: join_token has no challenge step;
// a server that sends one gets no answer.
func TestAttestJoinTokenRefusesChallenge(t *testing.T) {
	s := &challengeServer{typ: "join_token", payload: "tok", challenges: [][]byte{[]byte("x")}}
	cl := startChallengeServer(t, s)
	_, csr := testca.CSR(t)
	_, err := cl.AttestJoinToken(context.Background(), "tok", csr)
	if err == nil {
		t.Fatal("AttestJoinToken answered a challenge")
	}
	if msg, refused := client.AttestationRefused(err); refused {
		t.Fatalf("a challenge the agent cannot answer counts as the server's refusal (%q)", msg)
	}
	if got := <-s.seen; got != "params" {
		t.Fatalf("server saw %q", got)
	}
	if got := <-s.seen; got != "stream ended: Canceled" {
		t.Errorf("server saw %q, want the stream cancelled", got)
	}
}
