package endpoints_test

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/attest/node/jointoken"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/selector"
	agentapi "github.com/sigil-spiffe/sigil/internal/server/api/agent"
	"github.com/sigil-spiffe/sigil/internal/server/ratelimit"
)

// echoAttestor asks one challenge per "round" (the payload is
// "<host>" or "<host>/<rounds>") and expects each reversed; the agent is
// /spire/agent/echo/<host>, which may re-attest.
type echoAttestor struct{}

func (echoAttestor) Attest(ctx context.Context, payload []byte, challenge node.ChallengeFunc) (*node.Result, error) {
	host, rounds := string(payload), 1
	if h, n, ok := strings.Cut(host, "/"); ok {
		host = h
		if _, err := fmt.Sscan(n, &rounds); err != nil {
			return nil, fmt.Errorf("%w: rounds %q", node.ErrInvalid, n)
		}
	}
	for i := range rounds {
		nonce := fmt.Appendf(nil, "nonce-%d-%s", i, host)
		resp, err := challenge(ctx, nonce)
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(resp, reversed(nonce)) {
			return nil, fmt.Errorf("%w: wrong challenge response", node.ErrRefused)
		}
	}
	return &node.Result{
		AgentID:     spiffeid.RequireFromPath(td, "/spire/agent/echo/"+host),
		Selectors:   []selector.Selector{{Type: "echo", Value: "host:" + host}},
		CanReattest: true,
	}, nil
}

func reversed(b []byte) []byte {
	out := make([]byte, len(b))
	for i := range b {
		out[len(b)-1-i] = b[i]
	}
	return out
}

// staticAttestor has no challenge. Its payload is "<name> <selector value>
// [once|invalid|refused|broken]": the agent is /spire/agent/static/<name>
// with the selector static:<value>; "once" makes it trust-on-first-use (no
// re-attestation), the others fail as node.ErrInvalid, node.ErrRefused or
// an internal error.
type staticAttestor struct{}

func (staticAttestor) Attest(_ context.Context, payload []byte, _ node.ChallengeFunc) (*node.Result, error) {
	f := strings.Fields(string(payload))
	if len(f) < 2 {
		return nil, fmt.Errorf("%w: want \"<name> <selector>\"", node.ErrInvalid)
	}
	mode := ""
	if len(f) > 2 {
		mode = f[2]
	}
	switch mode {
	case "invalid":
		return nil, fmt.Errorf("%w: static payload is malformed", node.ErrInvalid)
	case "refused":
		return nil, fmt.Errorf("%w: static name %q is not allowed", node.ErrRefused, f[0])
	case "broken":
		return nil, errors.New("static attestor lost its secret database at /etc/static.db")
	}
	return &node.Result{
		AgentID:     spiffeid.RequireFromPath(td, "/spire/agent/static/"+f[0]),
		Selectors:   []selector.Selector{{Type: "static", Value: f[1]}},
		CanReattest: mode != "once",
	}, nil
}

// attestStream runs AttestAgent with data of type typ, answering each
// challenge with answer (nil: the challenge reversed), and returns the
// challenges seen and the result.
func attestStream(t *testing.T, h *harness, typ, payload string, key crypto.Signer, answer func([]byte) *agentv1.AttestAgentRequest) ([][]byte, *agentv1.AttestAgentResponse_Result, error) {
	t.Helper()
	stream, err := agentv1.NewAgentClient(h.anonConn()).AttestAgent(context.Background())
	if err != nil {
		return nil, nil, err
	}
	if err := stream.Send(&agentv1.AttestAgentRequest{Step: &agentv1.AttestAgentRequest_Params_{Params: &agentv1.AttestAgentRequest_Params{
		Data:   &types.AttestationData{Type: typ, Payload: []byte(payload)},
		Params: &agentv1.AgentX509SVIDParams{Csr: csrFor(t, key)},
	}}}); err != nil {
		return nil, nil, err
	}
	var challenges [][]byte
	for {
		resp, err := stream.Recv()
		if err != nil {
			return challenges, nil, err
		}
		if res := resp.GetResult(); res != nil {
			return challenges, res, nil
		}
		ch := resp.GetChallenge()
		challenges = append(challenges, ch)
		req := &agentv1.AttestAgentRequest{Step: &agentv1.AttestAgentRequest_ChallengeResponse{ChallengeResponse: reversed(ch)}}
		if answer != nil {
			req = answer(ch)
		}
		if req == nil {
			_ = stream.CloseSend()
			continue
		}
		if err := stream.Send(req); err != nil {
			return challenges, nil, err
		}
	}
}

func attestEcho(t *testing.T, h *harness, host string, reverse bool) (*agentv1.AttestAgentResponse_Result, error) {
	t.Helper()
	return attestEchoKey(t, h, host, reverse, newKey(t))
}

func attestEchoKey(t *testing.T, h *harness, host string, reverse bool, key crypto.Signer) (*agentv1.AttestAgentResponse_Result, error) {
	t.Helper()
	var answer func([]byte) *agentv1.AttestAgentRequest
	if !reverse {
		answer = func(ch []byte) *agentv1.AttestAgentRequest {
			return &agentv1.AttestAgentRequest{Step: &agentv1.AttestAgentRequest_ChallengeResponse{ChallengeResponse: ch}}
		}
	}
	_, res, err := attestStream(t, h, "echo", host, key, answer)
	return res, err
}

func attestStatic(t *testing.T, h *harness, payload string, key crypto.Signer) (*x509svid.SVID, error) {
	t.Helper()
	_, res, err := attestStream(t, h, "static", payload, key, nil)
	if err != nil {
		return nil, err
	}
	return svidFromChain(res.GetSvid().GetCertChain(), key)
}

func TestChallengeResponseAttestor(t *testing.T) {
	h := newHarness(t, harnessOpts{attestors: map[string]agentapi.NodeAttestor{"echo": echoAttestor{}}})
	ctx := context.Background()

	_, err := attestEcho(t, h, "h1", false)
	requireCode(t, err, codes.PermissionDenied)
	if msg := status.Convert(err).Message(); msg != "failed to attest: attestation refused: wrong challenge response" {
		t.Errorf("refusal message %q", msg)
	}
	if _, err := h.ds.GetNode(ctx, "spiffe://example.org/spire/agent/echo/h1"); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("a refused attestation recorded a node: %v", err)
	}

	key := newKey(t)
	res, err := attestEchoKey(t, h, "h1", true, key)
	if err != nil {
		t.Fatalf("attest: %v", err)
	}
	if !res.Reattestable || res.Svid.Id.Path != "/spire/agent/echo/h1" {
		t.Fatalf("result = %v", res)
	}
	node, err := h.ds.GetNode(ctx, "spiffe://example.org/spire/agent/echo/h1")
	if err != nil {
		t.Fatal(err)
	}
	if node.AttestationType != "echo" || !node.CanReattest || len(node.Selectors) != 1 || node.Selectors[0].Value != "host:h1" {
		t.Fatalf("node = %+v", node)
	}
	first := node.CertSerial
	// A reattestable agent must reattest instead of renewing.
	svid, err := svidFromChain(res.Svid.CertChain, key)
	if err != nil {
		t.Fatal(err)
	}
	_, err = agentv1.NewAgentClient(h.svidConn(svid)).RenewAgent(ctx, &agentv1.RenewAgentRequest{Params: &agentv1.AgentX509SVIDParams{Csr: csrFor(t, key)}})
	requireCode(t, err, codes.PermissionDenied)
	if r := deniedReason(err); r != types.PermissionDeniedDetails_AGENT_MUST_REATTEST {
		t.Fatalf("reason = %v, want AGENT_MUST_REATTEST", r)
	}
	// Re-attestation updates the serial of the existing node.
	if _, err := attestEcho(t, h, "h1", true); err != nil {
		t.Fatalf("re-attest: %v", err)
	}
	node, _ = h.ds.GetNode(ctx, "spiffe://example.org/spire/agent/echo/h1")
	if node.CertSerial == first {
		t.Fatal("re-attestation did not record the new serial")
	}
}

// TestChallengeWire: challenges travel as AttestAgentResponse.challenge
// and answers as AttestAgentRequest.challenge_response, any number of
// rounds (SPIRE's agent/v1 exchange); an agent that answers with anything
// else, or goes away, fails the attestation and nothing is recorded.
func TestChallengeWire(t *testing.T) {
	logs := newLogCapture()
	h := newHarness(t, harnessOpts{log: slog.New(logs), rateLimit: ratelimit.Config{Attestation: true, FailureBurst: 1000},
		attestors: map[string]agentapi.NodeAttestor{"echo": echoAttestor{}}})
	ctx := context.Background()

	chs, res, err := attestStream(t, h, "echo", "h3/3", newKey(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(chs) != 3 || string(chs[0]) != "nonce-0-h3" || string(chs[2]) != "nonce-2-h3" || res.Svid.Id.Path != "/spire/agent/echo/h3" {
		t.Fatalf("challenges %q, result %v", chs, res)
	}

	// Params again instead of a challenge response.
	_, _, err = attestStream(t, h, "echo", "h4", newKey(t), func([]byte) *agentv1.AttestAgentRequest {
		return &agentv1.AttestAgentRequest{Step: &agentv1.AttestAgentRequest_Params_{Params: &agentv1.AttestAgentRequest_Params{}}}
	})
	requireCode(t, err, codes.InvalidArgument)
	if msg := status.Convert(err).Message(); msg != "expected a challenge response from agent" {
		t.Errorf("message %q", msg)
	}
	// The agent closes its side instead of answering.
	_, _, err = attestStream(t, h, "echo", "h4", newKey(t), func([]byte) *agentv1.AttestAgentRequest { return nil })
	requireCode(t, err, codes.Internal)
	if msg := status.Convert(err).Message(); msg != "failed to receive challenge response from agent" {
		t.Errorf("message %q", msg)
	}
	if _, err := h.ds.GetNode(ctx, "spiffe://example.org/spire/agent/echo/h4"); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("a failed exchange recorded a node: %v", err)
	}
	// The malformed answer is a client failure (logged, counted); the
	// agent that went away is not.
	var reasons []string
	for _, l := range logs.records("Failed node attestation") {
		reasons = append(reasons, l["reason"])
	}
	if len(reasons) != 1 || reasons[0] != "expected a challenge response from agent" {
		t.Errorf("failure lines %q", reasons)
	}
}

// TestSeveralNodeAttestors: the server dispatches on the attestation type
// the agent sends, over every configured attestor (here join_token, a
// challenge/response one and a single-shot one side by side); a type not
// configured is FailedPrecondition, as in SPIRE, and counts as a failure.
func TestSeveralNodeAttestors(t *testing.T) {
	logs := newLogCapture()
	h := newHarness(t, harnessOpts{log: slog.New(logs), rateLimit: ratelimit.Config{Attestation: true, FailureBurst: 1000},
		attestors: map[string]agentapi.NodeAttestor{"echo": echoAttestor{}, "static": staticAttestor{}}})
	ctx := context.Background()
	conn := h.anonConn()

	tok, err := h.attest(conn, h.createToken(&agentv1.CreateJoinTokenRequest{}), newKey(t))
	if err != nil {
		t.Fatalf("join_token: %v", err)
	}
	echo, err := attestEcho(t, h, "e1", true)
	if err != nil {
		t.Fatalf("echo: %v", err)
	}
	static, err := attestStatic(t, h, "s1 rack:7", newKey(t))
	if err != nil {
		t.Fatalf("static: %v", err)
	}
	for id, want := range map[string]struct {
		typ, sel string
		reattest bool
	}{
		tok.ID.String(): {"join_token", "", false},
		"spiffe://example.org" + echo.Svid.Id.Path: {"echo", "echo:host:e1", true},
		static.ID.String():                         {"static", "static:rack:7", true},
	} {
		n, err := h.ds.GetNode(ctx, id)
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		var sels []string
		for _, s := range n.Selectors {
			sels = append(sels, s.String())
		}
		if n.AttestationType != want.typ || strings.Join(sels, ",") != want.sel || n.CanReattest != want.reattest {
			t.Errorf("%s: type %q selectors %q reattest %v, want %+v", id, n.AttestationType, sels, n.CanReattest, want)
		}
	}

	_, err = attestWith(conn, "x509pop", []byte("data"), csrFor(t, newKey(t)), newKey(t))
	requireCode(t, err, codes.FailedPrecondition)
	if msg := status.Convert(err).Message(); msg != `error getting node attestor: could not find node attestor type "x509pop"` {
		t.Errorf("message %q", msg)
	}
	lines := logs.records("Failed node attestation")
	if len(lines) != 1 || lines[0]["attestation_type"] != "x509pop" {
		t.Errorf("failure lines %v", lines)
	}
}

// TestNodeAttestorErrors: node.ErrInvalid is InvalidArgument and
// node.ErrRefused PermissionDenied, with the attestor's text (both client
// failures); any other error is Internal, its details only in the log.
func TestNodeAttestorErrors(t *testing.T) {
	logs := newLogCapture()
	h := newHarness(t, harnessOpts{log: slog.New(logs), rateLimit: ratelimit.Config{Attestation: true, FailureBurst: 1000},
		attestors: map[string]agentapi.NodeAttestor{"static": staticAttestor{}}})
	for _, c := range []struct {
		payload string
		code    codes.Code
		msg     string
	}{
		{"s2 x invalid", codes.InvalidArgument, "failed to attest: invalid attestation data: static payload is malformed"},
		{"s2 x refused", codes.PermissionDenied, `failed to attest: attestation refused: static name "s2" is not allowed`},
		{"s2 x broken", codes.Internal, "failed to attest"},
	} {
		_, err := attestStatic(t, h, c.payload, newKey(t))
		requireCode(t, err, c.code)
		if msg := status.Convert(err).Message(); msg != c.msg {
			t.Errorf("%s: message %q, want %q", c.payload, msg, c.msg)
		}
	}
	if n := len(logs.records("Failed node attestation")); n != 2 {
		t.Errorf("%d failure lines, want 2 (the internal failure is not the client's)", n)
	}
	var logged bool
	for _, l := range logs.records("failed to attest") {
		logged = logged || strings.Contains(l["error"], "/etc/static.db")
	}
	if !logged {
		t.Error("the internal failure's cause was not logged")
	}
}

// TestReattestation: a node attests again when its attestor says it can
// and it is not banned: its selectors are replaced, the new SVID's serial
// is the node's and the previous SVID no longer authenticates. A banned
// node, or one whose attestor cannot re-attest, is refused and unchanged.
func TestReattestation(t *testing.T) {
	h := newHarness(t, harnessOpts{attestors: map[string]agentapi.NodeAttestor{"static": staticAttestor{}}})
	ctx := context.Background()
	const id = "spiffe://example.org/spire/agent/static/r1"

	key1 := newKey(t)
	first, err := attestStatic(t, h, "r1 old", key1)
	if err != nil {
		t.Fatal(err)
	}
	key2 := newKey(t)
	second, err := attestStatic(t, h, "r1 new", key2)
	if err != nil {
		t.Fatalf("re-attestation: %v", err)
	}
	n, err := h.ds.GetNode(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if n.CertSerial != second.Certificates[0].SerialNumber.String() || n.NewCertSerial != "" ||
		len(n.Selectors) != 1 || n.Selectors[0].Value != "new" || n.AttestationType != "static" {
		t.Fatalf("node after re-attestation: %+v", n)
	}
	post := func(svid *x509svid.SVID) error {
		_, err := agentv1.NewAgentClient(h.svidConn(svid)).PostStatus(ctx, &agentv1.PostStatusRequest{})
		return err
	}
	if err := post(second); err != nil {
		t.Fatalf("new SVID: %v", err)
	}
	requireCode(t, post(first), codes.PermissionDenied)

	// Banned: refused, nothing changes.
	if _, err := agentv1.NewAgentClient(h.localConn()).BanAgent(ctx, &agentv1.BanAgentRequest{Id: &types.SPIFFEID{TrustDomain: "example.org", Path: "/spire/agent/static/r1"}}); err != nil {
		t.Fatal(err)
	}
	_, err = attestStatic(t, h, "r1 newer", newKey(t))
	requireCode(t, err, codes.PermissionDenied)
	if msg := status.Convert(err).Message(); msg != "failed to attest: agent is banned" {
		t.Errorf("banned: %q", msg)
	}
	if n, _ := h.ds.GetNode(ctx, id); !n.Banned() || n.Selectors[0].Value != "new" {
		t.Errorf("banned node changed: %+v", n)
	}

	// Trust on first use: a second attestation is refused.
	if _, err := attestStatic(t, h, "t1 a once", newKey(t)); err != nil {
		t.Fatal(err)
	}
	_, err = attestStatic(t, h, "t1 b once", newKey(t))
	requireCode(t, err, codes.PermissionDenied)
	if msg := status.Convert(err).Message(); msg != "failed to attest: attestation data has already been used to attest an agent" {
		t.Errorf("once: %q", msg)
	}
	if n, _ := h.ds.GetNode(ctx, "spiffe://example.org/spire/agent/static/t1"); n.Selectors[0].Value != "a" {
		t.Errorf("refused re-attestation changed the node: %+v", n)
	}
}

// TestJoinTokenNodeCannotReattest: a join token created again with the
// value of one that attested an agent still on record does not attest
// that agent again (join-token agents cannot re-attest), and the refusal
// leaves the token unconsumed.
func TestJoinTokenNodeCannotReattest(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	conn := h.anonConn()
	tok := h.createToken(&agentv1.CreateJoinTokenRequest{Token: "reused-token"})
	if _, err := h.attest(conn, tok, newKey(t)); err != nil {
		t.Fatal(err)
	}
	before, err := h.ds.GetNode(ctx, "spiffe://example.org/spire/agent/join_token/reused-token")
	if err != nil {
		t.Fatal(err)
	}
	h.createToken(&agentv1.CreateJoinTokenRequest{Token: "reused-token"})
	_, err = h.attest(conn, tok, newKey(t))
	requireCode(t, err, codes.PermissionDenied)
	if msg := status.Convert(err).Message(); msg != "failed to attest: attestation data has already been used to attest an agent" {
		t.Errorf("message %q", msg)
	}
	after, _ := h.ds.GetNode(ctx, "spiffe://example.org/spire/agent/join_token/reused-token")
	if after.CertSerial != before.CertSerial {
		t.Error("the refused attestation changed the node")
	}
	if _, err := h.ds.GetJoinToken(ctx, jointoken.Hash(tok)); err != nil {
		t.Errorf("the refused attestation consumed the token: %v", err)
	}
}
