package e2e

import (
	"slices"
	"strings"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/cloudfake"
)

// TestGCPIITAttestation: a sigil-agent on a "Compute Engine instance" (the
// fake's metadata server) attests to a real sigil-server with gcp_iit; the
// server verifies the token with the fake's Google certificates, asks the
// Compute API with its service account key (use_instance_metadata),
// records SPIRE's agent ID and selectors, and an alias entry on a label
// gives the workload its identity. The token is trust on first use: a
// second agent on the instance is refused and exits, until the first
// agent is evicted.
func TestGCPIITAttestation(t *testing.T) {
	gcp := cloudfake.NewGCP(t)
	inst := gcp.AddInstance(&cloudfake.GCPInstance{Name: "web-1", ID: "4071232845720010001", Tags: []string{"web"}, Labels: map[string]string{"env": "prod"}})
	data := gcp.ServerPluginData(t, testutil.ShortTempDir(t))
	data["use_instance_metadata"] = true
	data["allowed_label_keys"] = []string{"env"}
	srv := testutil.StartServer(t, testutil.ServerConfig{Plugins: []testutil.Plugin{{Type: "NodeAttestor", Name: "gcp_iit", Data: data}}})
	adm := srv.Admin(t)
	alias := srv.ID("/gcp/prod")
	adm.CreateEntry(t, alias, srv.ID("/spire/server"), "gcp_iit:project-id:sigil-test-project", "gcp_iit:label:env:prod")
	web := srv.ID("/web")
	adm.CreateEntry(t, web, alias, uidSelector)

	na := &testutil.Plugin{Type: "NodeAttestor", Name: "gcp_iit", Data: map[string]any{"identity_token_host": inst.MetadataHost()}}
	agent := testutil.StartAgent(t, testutil.AgentWith(t, srv, "", na))
	testutil.RequireSVID(t, agent.SocketAddr(), web, deadline)

	agentID := srv.ID("/spire/agent/gcp_iit/sigil-test-project/4071232845720010001")
	rec := agentRecord(t, adm, agentID.String())
	if rec == nil {
		t.Fatalf("the server lists no agent %s", agentID)
	}
	if rec.GetAttestationType() != "gcp_iit" || rec.GetCanReattest() {
		t.Errorf("agent record: attestation type %q, can re-attest %v", rec.GetAttestationType(), rec.GetCanReattest())
	}
	want := []string{
		"gcp_iit:instance-name:web-1", "gcp_iit:label:env:prod", "gcp_iit:project-id:sigil-test-project",
		"gcp_iit:sa:123456789012-compute@developer.gserviceaccount.com", "gcp_iit:tag:web", "gcp_iit:zone:us-central1-a",
	}
	if got := agentSelectors(rec); !slices.Equal(got, want) {
		t.Errorf("agent selectors\n got %q\nwant %q", got, want)
	}

	second := testutil.NewAgent(t, testutil.AgentWith(t, srv, "", na))
	second.StartProcess(t)
	logs := second.Proc.WaitExit(t, deadline)
	if !strings.Contains(logs, "attestation data has already been used to attest an agent") {
		t.Fatalf("the second agent on the instance did not exit with the refusal:\n%s", logs)
	}

	agent.Stop(t)
	adm.DeleteAgent(t, agentID)
	third := testutil.StartAgent(t, testutil.AgentWith(t, srv, "", na))
	testutil.RequireSVID(t, third.SocketAddr(), web, deadline)
}
