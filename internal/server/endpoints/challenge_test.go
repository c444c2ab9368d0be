package endpoints_test

import (
	"bytes"
	"context"
	"crypto"
	"fmt"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/selector"
	agentapi "github.com/sigil-spiffe/sigil/internal/server/api/agent"
)

// echoAttestor issues one challenge and expects it reversed.
type echoAttestor struct{}

func (echoAttestor) Attest(ctx context.Context, payload []byte, challenge node.ChallengeFunc) (*node.Result, error) {
	nonce := []byte("nonce-123")
	resp, err := challenge(ctx, nonce)
	if err != nil {
		return nil, err
	}
	want := make([]byte, len(nonce))
	for i := range nonce {
		want[len(nonce)-1-i] = nonce[i]
	}
	if !bytes.Equal(resp, want) {
		return nil, fmt.Errorf("%w: wrong challenge response", node.ErrRefused)
	}
	return &node.Result{
		AgentID:     spiffeid.RequireFromPath(td, "/spire/agent/echo/"+string(payload)),
		Selectors:   []selector.Selector{{Type: "echo", Value: "host:" + string(payload)}},
		CanReattest: true,
	}, nil
}

func attestEcho(t *testing.T, h *harness, host string, reverse bool) (*agentv1.AttestAgentResponse_Result, error) {
	t.Helper()
	return attestEchoKey(t, h, host, reverse, newKey(t))
}

func attestEchoKey(t *testing.T, h *harness, host string, reverse bool, key crypto.Signer) (*agentv1.AttestAgentResponse_Result, error) {
	t.Helper()
	stream, err := agentv1.NewAgentClient(h.anonConn()).AttestAgent(context.Background())
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&agentv1.AttestAgentRequest{Step: &agentv1.AttestAgentRequest_Params_{Params: &agentv1.AttestAgentRequest_Params{
		Data:   &types.AttestationData{Type: "echo", Payload: []byte(host)},
		Params: &agentv1.AgentX509SVIDParams{Csr: csrFor(t, key)},
	}}}); err != nil {
		return nil, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	ch := resp.GetChallenge()
	answer := append([]byte(nil), ch...)
	if reverse {
		for i := range ch {
			answer[len(ch)-1-i] = ch[i]
		}
	}
	if err := stream.Send(&agentv1.AttestAgentRequest{Step: &agentv1.AttestAgentRequest_ChallengeResponse{ChallengeResponse: answer}}); err != nil {
		return nil, err
	}
	resp, err = stream.Recv()
	if err != nil {
		return nil, err
	}
	return resp.GetResult(), nil
}

func TestChallengeResponseAttestor(t *testing.T) {
	h := newHarness(t, harnessOpts{attestors: map[string]agentapi.NodeAttestor{"echo": echoAttestor{}}})
	ctx := context.Background()

	_, err := attestEcho(t, h, "h1", false)
	requireCode(t, err, codes.PermissionDenied)

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
