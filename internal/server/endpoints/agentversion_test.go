package endpoints_test

import (
	"context"
	"strings"
	"testing"

	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"
)

// TestPostStatusRecordsAgentVersion: an agent's PostStatus (what
// spire-agent sends at start-up, and Sigil's agent too) over mTLS sets the
// agent_version that ListAgents and GetAgent return over the admin socket.
func TestPostStatusRecordsAgentVersion(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	svid := h.attestedAgent("version-token")
	agentConn := agentv1.NewAgentClient(h.svidConn(svid))
	admin := agentv1.NewAgentClient(h.localConn())
	version := func() string {
		t.Helper()
		list, err := admin.ListAgents(ctx, &agentv1.ListAgentsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.GetAgents()) != 1 {
			t.Fatalf("ListAgents: %d agents, want 1", len(list.GetAgents()))
		}
		got, err := admin.GetAgent(ctx, &agentv1.GetAgentRequest{
			Id:         &types.SPIFFEID{TrustDomain: svid.ID.TrustDomain().Name(), Path: svid.ID.Path()},
			OutputMask: &types.AgentMask{AgentVersion: true},
		})
		if err != nil {
			t.Fatal(err)
		}
		if got.GetAgentVersion() != list.GetAgents()[0].GetAgentVersion() {
			t.Fatalf("GetAgent says %q, ListAgents %q", got.GetAgentVersion(), list.GetAgents()[0].GetAgentVersion())
		}
		return got.GetAgentVersion()
	}
	if v := version(); v != "" {
		t.Fatalf("before PostStatus: agent_version %q, want empty", v)
	}
	if _, err := agentConn.PostStatus(ctx, &agentv1.PostStatusRequest{AgentVersion: "1.12.0"}); err != nil {
		t.Fatal(err)
	}
	if v := version(); v != "1.12.0" {
		t.Fatalf("agent_version %q, want 1.12.0", v)
	}
	// An empty version (a status without one) keeps the last.
	if _, err := agentConn.PostStatus(ctx, &agentv1.PostStatusRequest{CurrentBundleSerial: 3}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{strings.Repeat("v", 256), "1.0\n2.0", "1.0\x1b[2J"} {
		_, err := agentConn.PostStatus(ctx, &agentv1.PostStatusRequest{AgentVersion: bad})
		requireCode(t, err, codes.InvalidArgument)
	}
	if v := version(); v != "1.12.0" {
		t.Fatalf("after an empty and refused versions: agent_version %q, want 1.12.0", v)
	}
	// The admin socket cannot post an agent status.
	if _, err := admin.PostStatus(ctx, &agentv1.PostStatusRequest{AgentVersion: "9.9.9"}); err == nil {
		t.Fatal("PostStatus over the admin socket succeeded")
	}
}
