package interop

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/kubetest"
)

// TestK8sPSAT: NodeAttestor "k8s_psat" across implementations, on a real
// kube-apiserver (internal/testutil/kubetest). A spire-agent and a
// sigil-agent, each with the projected token of the same DaemonSet pod
// (TokenRequest for audience spire-server, bound to the pod), attest to
// sigil-server and to spire-server configured with the same
// `clusters = { "prod" = { ... } }` and kubeconfig: all four record the
// same agent ID (the node's UID), type, re-attestability and selectors,
// a node alias on k8s_psat selectors reaches the agent's workload, and,
// evicted, the agent attests again by itself.
func TestK8sPSAT(t *testing.T) {
	testutil.SPIREBinaries(t)
	k := kubetest.Shared(t)
	ns := k.Namespace(t)
	k.ServiceAccount(t, ns, "spire-agent")
	k.ServiceAccount(t, ns, "spire-server")
	k.Grant(t, ns, "spire-server",
		kubetest.Rule("authentication.k8s.io", "tokenreviews", "create"),
		kubetest.Rule("", "pods", "get"),
		kubetest.Rule("", "nodes", "get"))
	dir := testutil.ShortTempDir(t)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(k.KubeconfigToken(k.TokenRequest(t, ns, "spire-server", kubetest.TokenOptions{}))), 0o600); err != nil {
		t.Fatal(err)
	}
	node := k.Node(t, kubetest.NodeSpec{Labels: map[string]string{"pool": "edge", "other": "x"}})
	pod := k.Pod(t, kubetest.PodSpec{Namespace: ns, ServiceAccount: "spire-agent", NodeName: node.Name(),
		Labels: map[string]string{"app": "spire-agent", "other": "y"}, HostIP: "192.0.2.30"})
	tokenPath := filepath.Join(dir, "spire-agent")
	tok := k.TokenRequest(t, ns, "spire-agent", kubetest.TokenOptions{Audiences: []string{"spire-server"}, Pod: pod})
	if err := os.WriteFile(tokenPath, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	serverPlugin := testutil.Plugin{Type: "NodeAttestor", Name: "k8s_psat", Data: map[string]any{
		"clusters": map[string]any{
			"prod": map[string]any{
				"service_account_allow_list": []string{ns + ":spire-agent"},
				"kube_config_file":           kubeconfig,
				"allowed_node_label_keys":    []string{"pool"},
				"allowed_pod_label_keys":     []string{"app"},
			},
		},
	}}
	agentPlugin := &testutil.Plugin{Type: "NodeAttestor", Name: "k8s_psat", Data: map[string]any{"cluster": "prod", "token_path": tokenPath}}
	agentKinds := []struct {
		name  string
		start func(t testing.TB, cfg testutil.AgentConfig) *testutil.Agent
	}{
		{"spire-agent", testutil.StartSPIREAgent},
		{"sigil-agent", func(t testing.TB, cfg testutil.AgentConfig) *testutil.Agent { return testutil.StartAgent(t, cfg) }},
	}

	outcomes := map[string]string{}
	for _, sk := range serverKinds {
		for _, ak := range agentKinds {
			t.Run(sk.name+"/"+ak.name, func(t *testing.T) {
				srv := sk.start(t, testutil.ServerConfig{Plugins: []testutil.Plugin{serverPlugin}})
				adm := srv.Admin(t)
				agentID := srv.ID("/spire/agent/k8s_psat/prod/" + node.UID())
				alias := srv.ID("/k8s/prod/edge")
				adm.CreateEntry(t, alias, srv.ID("/spire/server"), "k8s_psat:cluster:prod", "k8s_psat:agent_node_label:pool:edge")
				web := srv.ID("/web")
				adm.CreateEntry(t, web, alias, uidSelector)

				a := ak.start(t, testutil.AgentWith(t, srv, "", agentPlugin))
				testutil.RequireSVID(t, a.SocketAddr(), web, deadline)
				rec := findAgent(t, adm, agentID)
				if rec == nil {
					t.Fatalf("%s does not list %s", srv.Name(), agentID)
				}
				var sels []string
				for _, s := range rec.GetSelectors() {
					sels = append(sels, s.GetType()+":"+s.GetValue())
				}
				sort.Strings(sels)
				outcomes[t.Name()] = fmt.Sprintf("type=%s reattest=%t selectors=%s", rec.GetAttestationType(), rec.GetCanReattest(),
					strings.Join(sels, " "))

				// Evicted, it attests again with the token.
				serial := rec.GetX509SvidSerialNumber()
				serverCLI(t, srv, "agent", "evict", "-spiffeID", agentID.String())
				err := testutil.Poll(deadline, 200*time.Millisecond, func() (bool, error) {
					r := findAgent(t, adm, agentID)
					return r != nil && r.GetX509SvidSerialNumber() != serial, nil
				})
				if err != nil {
					t.Fatalf("the evicted k8s_psat %s did not attest again to %s: %v", a.Name(), srv.Name(), err)
				}
				testutil.RequireSVID(t, a.SocketAddr(), web, deadline)
			})
		}
	}
	var first string
	for name, o := range outcomes {
		t.Logf("%s: %s", name, o)
		if first == "" {
			first = o
		} else if o != first {
			t.Errorf("k8s_psat agent records differ:\n%s", strings.Join(func() []string {
				var l []string
				for n, o := range outcomes {
					l = append(l, n+": "+o)
				}
				return l
			}(), "\n"))
			break
		}
	}
}
