// Package k8s runs real sigil-server and sigil-agent processes against a
// real Kubernetes API server (internal/testutil/kubetest): there is no
// kubelet, so the tests play its part for the agent (they request the
// pod's projected token with the TokenRequest API and write it where the
// kubelet would mount it).
package k8s

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/agent/client"
	"github.com/sigil-spiffe/sigil/internal/attest/node/k8spsat"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/kubetest"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m, testutil.Cleanup)) }

// deadline is a generous bound for things that normally take
// milliseconds; tests never assert on timing.
const deadline = 30 * time.Second

var uidSelector = "unix:uid:" + strconv.Itoa(os.Getuid())

// psatCluster is a namespace of the API server with the agent
// DaemonSet's service account (spire-agent), a node and the agent's pod
// on it, and sigil-server's service account with the README's RBAC.
type psatCluster struct {
	kube       *kubetest.Server
	ns         string
	node, pod  kubetest.Object
	kubeconfig string
}

func newPSATCluster(t *testing.T) *psatCluster {
	t.Helper()
	k := kubetest.Shared(t)
	c := &psatCluster{kube: k, ns: k.Namespace(t)}
	k.ServiceAccount(t, c.ns, "spire-agent")
	k.ServiceAccount(t, c.ns, "sigil-server")
	k.Grant(t, c.ns, "sigil-server",
		kubetest.Rule("authentication.k8s.io", "tokenreviews", "create"),
		kubetest.Rule("", "pods", "get"),
		kubetest.Rule("", "nodes", "get"))
	c.kubeconfig = filepath.Join(testutil.ShortTempDir(t), "kubeconfig")
	tok := k.TokenRequest(t, c.ns, "sigil-server", kubetest.TokenOptions{})
	if err := os.WriteFile(c.kubeconfig, []byte(k.KubeconfigToken(tok)), 0o600); err != nil {
		t.Fatal(err)
	}
	c.node = k.Node(t, kubetest.NodeSpec{Labels: map[string]string{"pool": "edge"}})
	c.pod = c.agentPod(t, "v1")
	return c
}

func (c *psatCluster) agentPod(t *testing.T, version string) kubetest.Object {
	t.Helper()
	return c.kube.Pod(t, kubetest.PodSpec{Namespace: c.ns, ServiceAccount: "spire-agent", NodeName: c.node.Name(),
		Labels: map[string]string{"app": "spire-agent", "version": version}, HostIP: "192.0.2.20"})
}

// token writes a projected token of pod for spire-server to path, as the
// kubelet does.
func (c *psatCluster) token(t *testing.T, pod kubetest.Object, path string) {
	t.Helper()
	tok := c.kube.TokenRequest(t, c.ns, "spire-agent", kubetest.TokenOptions{Audiences: []string{"spire-server"}, Pod: pod})
	if err := os.WriteFile(path, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
}

// serverPlugin is the server's NodeAttestor "k8s_psat" for this cluster,
// named "prod".
func (c *psatCluster) serverPlugin() testutil.Plugin {
	return testutil.Plugin{Type: "NodeAttestor", Name: k8spsat.Type, Data: map[string]any{
		"clusters": map[string]any{
			"prod": map[string]any{
				"service_account_allow_list": []string{c.ns + ":spire-agent"},
				"kube_config_file":           c.kubeconfig,
				"allowed_node_label_keys":    []string{"pool"},
				"allowed_pod_label_keys":     []string{"version"},
			},
		},
	}}
}

// agentSelectors returns the selectors the server lists for agent id.
func agentSelectors(t *testing.T, srv *testutil.Server, id spiffeid.ID) ([]string, bool) {
	t.Helper()
	for _, a := range srv.Admin(t).ListAgents(t) {
		if testutil.IDString(a.GetId()) != id.String() {
			continue
		}
		var out []string
		for _, s := range a.GetSelectors() {
			out = append(out, s.GetType()+":"+s.GetValue())
		}
		return out, true
	}
	return nil, false
}

// TestPSATAgent: a real sigil-agent attests to a real sigil-server with
// the projected token of its pod (token_path), gets SPIRE's k8s_psat
// agent ID and selectors, and serves this process an SVID through a node
// alias entry on a k8s_psat selector. Evicted, it attests again by
// itself, reading token_path anew: the kubelet's rotated token (here of
// the DaemonSet's replacement pod, the old pod deleted) is what it proves.
func TestPSATAgent(t *testing.T) {
	c := newPSATCluster(t)
	srv := testutil.StartServer(t, testutil.ServerConfig{Plugins: []testutil.Plugin{c.serverPlugin()}})
	tokenPath := filepath.Join(testutil.ShortTempDir(t), "spire-agent")
	c.token(t, c.pod, tokenPath)

	alias := srv.ID("/k8s/prod/edge")
	srv.Admin(t).CreateEntry(t, alias, srv.ID("/spire/server"), "k8s_psat:cluster:prod", "k8s_psat:agent_node_label:pool:edge")
	webID := srv.ID("/web")
	srv.Admin(t).CreateEntry(t, webID, alias, uidSelector)

	agent := testutil.StartAgent(t, testutil.AgentWith(t, srv, "", &testutil.Plugin{Type: "NodeAttestor", Name: k8spsat.Type,
		Data: map[string]any{"cluster": "prod", "token_path": tokenPath}}))
	testutil.RequireSVID(t, agent.SocketAddr(), webID, deadline)

	agentID := srv.ID("/spire/agent/k8s_psat/prod/" + c.node.UID())
	sels, ok := agentSelectors(t, srv, agentID)
	if !ok {
		t.Fatalf("the server does not list %s", agentID)
	}
	for _, want := range []string{
		"k8s_psat:cluster:prod", "k8s_psat:agent_ns:" + c.ns, "k8s_psat:agent_sa:spire-agent",
		"k8s_psat:agent_pod_name:" + c.pod.Name(), "k8s_psat:agent_pod_uid:" + c.pod.UID(),
		"k8s_psat:agent_node_name:" + c.node.Name(), "k8s_psat:agent_node_uid:" + c.node.UID(),
		"k8s_psat:agent_node_ip:192.0.2.20", "k8s_psat:agent_node_label:pool:edge", "k8s_psat:agent_pod_label:version:v1",
	} {
		if !slices.Contains(sels, want) {
			t.Errorf("agent selectors %q lack %s", sels, want)
		}
	}

	// The DaemonSet's pod is replaced: the old one deleted (its token no
	// longer attests), the kubelet writes the new pod's token.
	next := c.agentPod(t, "v2")
	c.kube.Delete(t, "/api/v1/namespaces/"+c.ns+"/pods/"+c.pod.Name())
	c.token(t, next, tokenPath)
	srv.Admin(t).DeleteAgent(t, agentID)
	agent.Proc.WaitForLog(t, "Attesting again after the server refused the agent", deadline)
	if err := testutil.Poll(deadline, 50*time.Millisecond, func() (bool, error) {
		sels, ok := agentSelectors(t, srv, agentID)
		return ok && slices.Contains(sels, "k8s_psat:agent_pod_uid:"+next.UID()), nil
	}); err != nil {
		sels, _ := agentSelectors(t, srv, agentID)
		t.Fatalf("the agent did not attest again with the new pod's token: selectors %q\n%s", sels, agent.Proc.Logs())
	}
	testutil.RequireSVID(t, agent.SocketAddr(), webID, deadline)
}

// TestPSATOverGRPC: the server's answers on agent/v1 AttestAgent: a token
// for another audience, of a service account outside the allow list, or
// of a deleted pod is PermissionDenied with the reason; an unknown cluster
// is InvalidArgument; a valid token attests, and again (re-attestable).
func TestPSATOverGRPC(t *testing.T) {
	c := newPSATCluster(t)
	srv := testutil.StartServer(t, testutil.ServerConfig{Plugins: []testutil.Plugin{c.serverPlugin()}})
	roots := testca.ParseCertsPEM(t, srv.Admin(t).BundlePEM(t))
	cl, err := client.Dial(client.Config{Addr: srv.Addr(), TrustDomain: srv.TrustDomain(), Bundle: func() []*x509.Certificate { return roots }})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := context.Background()
	csr := csrOf(t)
	attest := func(cluster, token string) (*client.Attestation, error) {
		path := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(path, []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		a, err := k8spsat.NewAgent(k8spsat.AgentConfig{Cluster: cluster, TokenPath: path})
		if err != nil {
			t.Fatal(err)
		}
		s, err := a.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		return cl.AttestAgent(ctx, k8spsat.Type, s, csr)
	}
	tokenFor := func(pod kubetest.Object, sa string, aud ...string) string {
		return c.kube.TokenRequest(t, c.ns, sa, kubetest.TokenOptions{Audiences: aud, Pod: pod})
	}
	expect := func(what string, err error, code codes.Code, msg string) {
		t.Helper()
		if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), msg) {
			t.Errorf("%s: %v, want %s containing %q", what, err, code, msg)
		}
	}

	good := tokenFor(c.pod, "spire-agent", "spire-server")
	for range 2 {
		if _, err := attest("prod", good); err != nil {
			t.Fatal(err)
		}
	}
	_, err = attest("prod", tokenFor(c.pod, "spire-agent", "vault"))
	expect("another audience", err, codes.PermissionDenied, "token not authenticated")
	_, err = attest("staging", good)
	expect("unknown cluster", err, codes.InvalidArgument, `not configured for cluster "staging"`)
	c.kube.ServiceAccount(t, c.ns, "intruder")
	intruder := c.kube.Pod(t, kubetest.PodSpec{Namespace: c.ns, ServiceAccount: "intruder", NodeName: c.node.Name()})
	_, err = attest("prod", tokenFor(intruder, "intruder", "spire-server"))
	expect("service account outside the allow list", err, codes.PermissionDenied, `"`+c.ns+`:intruder" is not in service_account_allow_list`)
	c.kube.Delete(t, "/api/v1/namespaces/"+c.ns+"/pods/"+c.pod.Name())
	_, err = attest("prod", good)
	expect("deleted pod", err, codes.PermissionDenied, "")
}

// csrOf is a certificate request of a new key.
func csrOf(t *testing.T) []byte {
	t.Helper()
	_, csr := testca.CSR(t)
	return csr
}
