package e2e

import (
	"slices"
	"strings"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/cloudfake"
)

// TestAzureIMDSAttestation: a sigil-agent on an "Azure VM" (the fake's
// metadata service) attests to a real sigil-server with azure_imds: the
// server's nonce crosses the stream, the agent answers with the attested
// document for it, the server verifies it against the fake's test root
// (trust_bundle_path), looks the tenant up from its domain and the VM up in
// the fake Resource Manager, records SPIRE's agent ID and selectors, and an
// alias entry on the VM's tag and subnet gives the workload its identity.
// A second agent on the VM is refused and exits (trust on first use).
func TestAzureIMDSAttestation(t *testing.T) {
	az := cloudfake.NewAzure(t)
	vm := az.AddVM(&cloudfake.AzureVM{Name: "web-2", NSG: "web-nsg", Tags: map[string]string{"env": "prod"}})
	srv := testutil.StartServer(t, testutil.ServerConfig{Plugins: []testutil.Plugin{{Type: "NodeAttestor", Name: "azure_imds", Data: az.IMDSServerPluginData(t, t.TempDir())}}})
	adm := srv.Admin(t)
	alias := srv.ID("/azure/web-imds")
	adm.CreateEntry(t, alias, srv.ID("/spire/server"), "azure_imds:vm-tag:env:prod", "azure_imds:virtual-network-subnet:vnet-test:default")
	web := srv.ID("/web")
	adm.CreateEntry(t, web, alias, uidSelector)

	na := &testutil.Plugin{Type: "NodeAttestor", Name: "azure_imds", Data: map[string]any{"tenant_domain": cloudfake.AzureTenantDomain, "metadata_endpoint": vm.IMDSURL()}}
	agent := testutil.StartAgent(t, testutil.AgentWith(t, srv, "", na))
	testutil.RequireSVID(t, agent.SocketAddr(), web, deadline)

	agentID := srv.ID("/spire/agent/azure_imds/" + cloudfake.AzureTenant + "/" + cloudfake.AzureSubscription + "/" + vm.VMID)
	rec := agentRecord(t, adm, agentID.String())
	if rec == nil {
		t.Fatalf("the server lists no agent %s", agentID)
	}
	want := []string{
		"azure_imds:network-security-group:rg-test:web-nsg", "azure_imds:resource-group:rg-test", "azure_imds:subscription-id:" + cloudfake.AzureSubscription,
		"azure_imds:virtual-network-subnet:vnet-test:default", "azure_imds:virtual-network:vnet-test", "azure_imds:vm-location:westeurope",
		"azure_imds:vm-name:web-2", "azure_imds:vm-tag:env:prod",
	}
	if got := agentSelectors(rec); rec.GetAttestationType() != "azure_imds" || rec.GetCanReattest() || !slices.Equal(got, want) {
		t.Errorf("agent record: type %q, can re-attest %v, selectors\n got %q\nwant %q", rec.GetAttestationType(), rec.GetCanReattest(), got, want)
	}
	if n := az.Calls("attested"); n != 1 {
		t.Errorf("the metadata service served %d attested documents, want 1", n)
	}
	second := testutil.NewAgent(t, testutil.AgentWith(t, srv, "", na))
	second.StartProcess(t)
	if logs := second.Proc.WaitExit(t, deadline); !strings.Contains(logs, "attestation data has already been used to attest an agent") {
		t.Fatalf("the second agent on the VM did not exit with the refusal:\n%s", logs)
	}
}
