package e2e

import (
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/cloudfake"
)

// agentRecord returns the server's record of an agent, nil if none.
func agentRecord(t *testing.T, adm *testutil.Admin, id string) *types.Agent {
	t.Helper()
	for _, a := range adm.ListAgents(t) {
		if testutil.IDString(a.GetId()) == id {
			return a
		}
	}
	return nil
}

// TestAWSIIDAttestation: a sigil-agent on an "EC2 instance" (the fake's
// IMDSv2) attests to a real sigil-server with aws_iid; the server verifies
// the document against the configured certificates and asks the fake EC2
// and IAM APIs (the AWS SDK's real requests) for the instance, records
// SPIRE's agent ID and selectors, and an alias entry on a tag gives the
// workload its identity. The document is trust on first use: a second
// agent on the same instance is refused and exits, until the first agent
// is evicted.
func TestAWSIIDAttestation(t *testing.T) {
	aws := cloudfake.NewAWS(t)
	inst := aws.AddInstance(&cloudfake.Instance{
		ID:             "i-0a1b2c3d4e5f60718",
		Tags:           map[string]string{"role": "web"},
		SecurityGroups: map[string]string{"sg-0123abcd": "web-sg"},
	})
	srv := testutil.StartServer(t, testutil.ServerConfig{Plugins: []testutil.Plugin{
		{Type: "NodeAttestor", Name: "aws_iid", Data: aws.ServerPluginData(t, testutil.ShortTempDir(t))},
	}})
	adm := srv.Admin(t)
	alias := srv.ID("/aws/web")
	adm.CreateEntry(t, alias, srv.ID("/spire/server"), "aws_iid:tag:role:web", "aws_iid:sg:name:web-sg")
	web := srv.ID("/web")
	adm.CreateEntry(t, web, alias, uidSelector)

	na := &testutil.Plugin{Type: "NodeAttestor", Name: "aws_iid", Data: map[string]any{"ec2_metadata_endpoint": inst.IMDSURL()}}
	agent := testutil.StartAgent(t, testutil.AgentWith(t, srv, "", na))
	testutil.RequireSVID(t, agent.SocketAddr(), web, deadline)

	agentID := srv.ID("/spire/agent/aws_iid/" + cloudfake.HomeAccount + "/us-east-1/i-0a1b2c3d4e5f60718")
	rec := agentRecord(t, adm, agentID.String())
	if rec == nil {
		t.Fatalf("the server lists no agent %s", agentID)
	}
	if rec.GetAttestationType() != "aws_iid" || rec.GetCanReattest() {
		t.Errorf("agent record: attestation type %q, can re-attest %v", rec.GetAttestationType(), rec.GetCanReattest())
	}
	want := []string{
		"aws_iid:account_id:" + cloudfake.HomeAccount, "aws_iid:az:us-east-1a", "aws_iid:image:id:ami-0123456789abcdef0",
		"aws_iid:instance:id:i-0a1b2c3d4e5f60718", "aws_iid:region:us-east-1",
		"aws_iid:sg:id:sg-0123abcd", "aws_iid:sg:name:web-sg", "aws_iid:tag:role:web",
	}
	if got := agentSelectors(rec); !slices.Equal(got, want) {
		t.Errorf("agent selectors\n got %q\nwant %q", got, want)
	}

	// The same document again (another agent on the instance, or a
	// process that read it): refused, and that agent exits.
	second := testutil.NewAgent(t, testutil.AgentWith(t, srv, "", na))
	second.StartProcess(t)
	logs := second.Proc.WaitExit(t, deadline)
	if !strings.Contains(logs, "attestation data has already been used to attest an agent") {
		t.Fatalf("the second agent on the instance did not exit with the refusal:\n%s", logs)
	}
	testutil.RequireSVID(t, agent.SocketAddr(), web, deadline)

	// Evicted, the instance's agent attests anew.
	agent.Stop(t)
	adm.DeleteAgent(t, agentID)
	third := testutil.StartAgent(t, testutil.AgentWith(t, srv, "", na))
	testutil.RequireSVID(t, third.SocketAddr(), web, deadline)
}
