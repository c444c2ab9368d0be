package e2e

import (
	"slices"
	"strings"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/cloudfake"
)

// TestAzureMSIAttestation: a sigil-agent on an "Azure VM" (the fake's
// metadata service) attests to a real sigil-server with azure_msi; the
// server verifies the token with the fake's Azure AD keys and reads the VM
// from the fake Resource Manager with the tenant's app, records SPIRE's
// agent ID and selectors, and an alias entry on the subnet gives the
// workload its identity. A second agent on the VM is refused and exits.
func TestAzureMSIAttestation(t *testing.T) {
	az := cloudfake.NewAzure(t)
	vm := az.AddVM(&cloudfake.AzureVM{Name: "web-1", NSG: "web-nsg"})
	srv := testutil.StartServer(t, testutil.ServerConfig{Plugins: []testutil.Plugin{{Type: "NodeAttestor", Name: "azure_msi", Data: az.ServerPluginData()}}})
	adm := srv.Admin(t)
	alias := srv.ID("/azure/web")
	adm.CreateEntry(t, alias, srv.ID("/spire/server"), "azure_msi:virtual-network-subnet:rg-test:vnet-test:default", "azure_msi:network-security-group:rg-test:web-nsg")
	web := srv.ID("/web")
	adm.CreateEntry(t, web, alias, uidSelector)

	na := &testutil.Plugin{Type: "NodeAttestor", Name: "azure_msi", Data: map[string]any{"metadata_endpoint": vm.IMDSURL()}}
	agent := testutil.StartAgent(t, testutil.AgentWith(t, srv, "", na))
	testutil.RequireSVID(t, agent.SocketAddr(), web, deadline)

	agentID := srv.ID("/spire/agent/azure_msi/" + cloudfake.AzureTenant + "/" + vm.PrincipalID)
	rec := agentRecord(t, adm, agentID.String())
	if rec == nil {
		t.Fatalf("the server lists no agent %s", agentID)
	}
	want := []string{
		"azure_msi:network-security-group:rg-test:web-nsg", "azure_msi:subscription-id:" + cloudfake.AzureSubscription,
		"azure_msi:virtual-network-subnet:rg-test:vnet-test:default", "azure_msi:virtual-network:rg-test:vnet-test", "azure_msi:vm-name:rg-test:web-1",
	}
	if got := agentSelectors(rec); rec.GetAttestationType() != "azure_msi" || rec.GetCanReattest() || !slices.Equal(got, want) {
		t.Errorf("agent record: type %q, can re-attest %v, selectors\n got %q\nwant %q", rec.GetAttestationType(), rec.GetCanReattest(), got, want)
	}
	second := testutil.NewAgent(t, testutil.AgentWith(t, srv, "", na))
	second.StartProcess(t)
	if logs := second.Proc.WaitExit(t, deadline); !strings.Contains(logs, "attestation data has already been used to attest an agent") {
		t.Fatalf("the second agent on the VM did not exit with the refusal:\n%s", logs)
	}
}
