package interop

import (
	"slices"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/cloudfake"
)

// TestCloudAttestorsSPIREAgent: a real spire-agent 1.15 attests to
// sigil-server with aws_iid (its AWS SDK's IMDSv2 client against the
// fake's metadata service, ec2_metadata_endpoint) and with gcp_iit (the
// fake's metadata server, identity_token_host): sigil-server accepts
// SPIRE's payloads, records SPIRE's agent IDs and selectors, and the
// agents' workloads get their SVIDs through node aliases on those
// selectors. (spire-server cannot be pointed at test certificates or
// Google's certificate URL, and spire-agent's azure_msi only talks to
// 169.254.169.254, so the other directions are not testable here.)
func TestCloudAttestorsSPIREAgent(t *testing.T) {
	testutil.SPIREBinaries(t)
	aws := cloudfake.NewAWS(t)
	ec2 := aws.AddInstance(&cloudfake.Instance{ID: "i-0a1b2c3d4e5f60718", Tags: map[string]string{"role": "web"}, SecurityGroups: map[string]string{"sg-0123abcd": "web-sg"}})
	gcp := cloudfake.NewGCP(t)
	gce := gcp.AddInstance(&cloudfake.GCPInstance{Name: "web-1", ID: "4071232845720010001"})
	dir := testutil.ShortTempDir(t)
	srv := testutil.StartServer(t, testutil.ServerConfig{Plugins: []testutil.Plugin{
		{Type: "NodeAttestor", Name: "aws_iid", Data: aws.ServerPluginData(t, dir)},
		{Type: "NodeAttestor", Name: "gcp_iit", Data: gcp.ServerPluginData(t, dir)},
	}})
	adm := srv.Admin(t)
	for _, tc := range []struct {
		name, selector, agentID string
		na                      testutil.Plugin
		want                    []string
	}{
		{"aws_iid", "aws_iid:tag:role:web", "/spire/agent/aws_iid/" + cloudfake.HomeAccount + "/us-east-1/i-0a1b2c3d4e5f60718",
			testutil.Plugin{Type: "NodeAttestor", Name: "aws_iid", Data: map[string]any{"ec2_metadata_endpoint": ec2.IMDSURL() + "/latest"}},
			[]string{"aws_iid:account_id:" + cloudfake.HomeAccount, "aws_iid:az:us-east-1a", "aws_iid:image:id:ami-0123456789abcdef0",
				"aws_iid:instance:id:i-0a1b2c3d4e5f60718", "aws_iid:region:us-east-1", "aws_iid:sg:id:sg-0123abcd", "aws_iid:sg:name:web-sg", "aws_iid:tag:role:web"}},
		{"gcp_iit", "gcp_iit:project-id:sigil-test-project", "/spire/agent/gcp_iit/sigil-test-project/4071232845720010001",
			testutil.Plugin{Type: "NodeAttestor", Name: "gcp_iit", Data: map[string]any{"identity_token_host": gce.MetadataHost()}},
			[]string{"gcp_iit:instance-name:web-1", "gcp_iit:project-id:sigil-test-project", "gcp_iit:sa:123456789012-compute@developer.gserviceaccount.com", "gcp_iit:zone:us-central1-a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			alias := srv.ID("/node/" + tc.name)
			adm.CreateEntry(t, alias, srv.ID("/spire/server"), tc.selector)
			web := srv.ID("/web/" + tc.name)
			adm.CreateEntry(t, web, alias, uidSelector)
			na := tc.na
			a := testutil.StartSPIREAgent(t, testutil.AgentWith(t, srv, "", &na))
			testutil.RequireSVID(t, a.SocketAddr(), web, deadline)
			var rec []string
			var typ string
			for _, ag := range adm.ListAgents(t) {
				if testutil.IDString(ag.GetId()) == srv.ID(tc.agentID).String() {
					typ = ag.GetAttestationType()
					for _, s := range ag.GetSelectors() {
						rec = append(rec, s.GetType()+":"+s.GetValue())
					}
				}
			}
			slices.Sort(rec)
			if typ != tc.name || !slices.Equal(rec, tc.want) {
				t.Errorf("agent %s: type %q, selectors\n got %q\nwant %q", tc.agentID, typ, rec, tc.want)
			}
		})
	}
}
