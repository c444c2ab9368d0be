package k8spsat

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/kubeapi/kubeconfig"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/kubetest"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }

var td = spiffeid.RequireTrustDomainFromString("example.org")

// kubeCluster is a namespace of the test binary's API server with what an
// agent DaemonSet's pod has (its service account "spire-agent", a node, a
// pod on it) and the kubeconfig of the server's own service account,
// granted only what the README's RBAC grants (create tokenreviews, get
// pods and nodes).
type kubeCluster struct {
	kube       *kubetest.Server
	ns         string
	node, pod  kubetest.Object
	kubeconfig string
}

func newCluster(t *testing.T) *kubeCluster {
	t.Helper()
	k := kubetest.Shared(t)
	c := &kubeCluster{kube: k, ns: k.Namespace(t)}
	k.ServiceAccount(t, c.ns, "spire-agent")
	k.ServiceAccount(t, c.ns, "sigil-server")
	k.Grant(t, c.ns, "sigil-server",
		kubetest.Rule("authentication.k8s.io", "tokenreviews", "create"),
		kubetest.Rule("", "pods", "get"),
		kubetest.Rule("", "nodes", "get"))
	c.kubeconfig = filepath.Join(t.TempDir(), "kubeconfig")
	tok := k.TokenRequest(t, c.ns, "sigil-server", kubetest.TokenOptions{})
	if err := os.WriteFile(c.kubeconfig, []byte(k.KubeconfigToken(tok)), 0o600); err != nil {
		t.Fatal(err)
	}
	c.node = k.Node(t, kubetest.NodeSpec{Labels: map[string]string{"topology.kubernetes.io/zone": "eu-1", "secret": "s"}})
	c.pod = c.agentPod(t, "spire-agent")
	return c
}

// agentPod creates a pod of service account sa on the cluster's node.
func (c *kubeCluster) agentPod(t *testing.T, sa string) kubetest.Object {
	t.Helper()
	return c.kube.Pod(t, kubetest.PodSpec{Namespace: c.ns, ServiceAccount: sa, NodeName: c.node.Name(),
		Labels: map[string]string{"app": "spire-agent", "hash": "x"}, HostIP: "192.0.2.10"})
}

// config is the cluster "prod" of a server configuration.
func (c *kubeCluster) config(edit ...func(*ClusterConfig)) ServerConfig {
	cc := ClusterConfig{
		Name:                    "prod",
		ServiceAccountAllowList: []string{c.ns + ":spire-agent"},
		KubeConfigFile:          c.kubeconfig,
		AllowedNodeLabelKeys:    []string{"topology.kubernetes.io/zone"},
		AllowedPodLabelKeys:     []string{"app"},
	}
	for _, e := range edit {
		e(&cc)
	}
	return ServerConfig{Clusters: []ClusterConfig{cc}}
}

func (c *kubeCluster) server(t *testing.T, edit ...func(*ClusterConfig)) *Server {
	t.Helper()
	s, err := NewServer(c.config(edit...), ServerOptions{TrustDomain: td, Loader: kubeconfig.Loader})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// token is a projected token of the pod for audiences (as the kubelet
// requests it for the pod's volume).
func (c *kubeCluster) token(t *testing.T, pod kubetest.Object, audiences ...string) string {
	t.Helper()
	sa, _ := pod["spec"].(map[string]any)["serviceAccountName"].(string)
	return c.kube.TokenRequest(t, c.ns, sa, kubetest.TokenOptions{Audiences: audiences, Pod: pod})
}

// attest runs an agent half reading token from a file against s.
func attest(t *testing.T, s *Server, cluster, token string) (*node.Result, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := NewAgent(AgentConfig{Cluster: cluster, TokenPath: path})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := a.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	return s.Attest(context.Background(), sess.Payload(), func(context.Context, []byte) ([]byte, error) {
		t.Fatal("k8s_psat sent a challenge")
		return nil, nil
	})
}

func values(sels []selector.Selector) []string {
	var out []string
	for _, s := range sels {
		if s.Type != Type {
			out = append(out, "wrong type "+s.String())
			continue
		}
		out = append(out, s.Value)
	}
	slices.Sort(out)
	return out
}

// TestAttestProjectedToken: a token TokenRequest issues for the agent's
// pod and the server's audience attests the pod's node: SPIRE's agent ID
// (the node's UID) and selectors, only the allowed labels, re-attestable.
func TestAttestProjectedToken(t *testing.T) {
	c := newCluster(t)
	s := c.server(t)
	res, err := attest(t, s, "prod", c.token(t, c.pod, "spire-server"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://example.org/spire/agent/k8s_psat/prod/" + c.node.UID(); res.AgentID.String() != want {
		t.Errorf("agent ID %s, want %s", res.AgentID, want)
	}
	want := []string{
		"agent_node_ip:192.0.2.10",
		"agent_node_label:topology.kubernetes.io/zone:eu-1",
		"agent_node_name:" + c.node.Name(),
		"agent_node_uid:" + c.node.UID(),
		"agent_ns:" + c.ns,
		"agent_pod_label:app:spire-agent",
		"agent_pod_name:" + c.pod.Name(),
		"agent_pod_uid:" + c.pod.UID(),
		"agent_sa:spire-agent",
		"cluster:prod",
	}
	if got := values(res.Selectors); !slices.Equal(got, want) {
		t.Errorf("selectors\n got %q\nwant %q", got, want)
	}
	if !res.CanReattest {
		t.Error("k8s_psat attestation is not re-attestable")
	}
	// Every selector passes the kind's check (entries can name them).
	r, err := selector.NewRegistry(SelectorKind())
	if err != nil {
		t.Fatal(err)
	}
	for _, sel := range res.Selectors {
		if err := r.Check(sel); err != nil {
			t.Error(err)
		}
	}

	// use_pod_uid_for_agent_id.
	res, err = attest(t, c.server(t, func(cc *ClusterConfig) { cc.UsePodUIDForAgentID = true }), "prod", c.token(t, c.pod, "spire-server"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://example.org/spire/agent/k8s_psat/prod/pod/" + c.pod.UID(); res.AgentID.String() != want {
		t.Errorf("agent ID %s, want %s", res.AgentID, want)
	}
}

// TestAttestAudience: the token must be for one of the cluster's
// audiences (spire-server by default); an empty audience list asks for
// the API server's own.
func TestAttestAudience(t *testing.T) {
	c := newCluster(t)
	def := c.server(t)
	for _, tc := range []struct {
		name     string
		s        *Server
		audience []string // of the token; none: the API server's
		ok       bool
	}{
		{"wrong audience", def, []string{"someone-else"}, false},
		{"the API server's audience", def, nil, false},
		{"one of the token's audiences", def, []string{"someone-else", "spire-server"}, true},
		{"one of the cluster's audiences", c.server(t, func(cc *ClusterConfig) { cc.Audience = []string{"a", "b"} }), []string{"b"}, true},
		{"not the default when others are set", c.server(t, func(cc *ClusterConfig) { cc.Audience = []string{"a"} }), []string{"spire-server"}, false},
		{"audience = [] takes the API server's", c.server(t, func(cc *ClusterConfig) { cc.Audience = []string{} }), nil, true},
		{"audience = [] refuses others", c.server(t, func(cc *ClusterConfig) { cc.Audience = []string{} }), []string{"spire-server"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := attest(t, tc.s, "prod", c.token(t, c.pod, tc.audience...))
			switch {
			case tc.ok && err != nil:
				t.Fatal(err)
			case tc.ok && res.AgentID.String() != "spiffe://example.org/spire/agent/k8s_psat/prod/"+c.node.UID():
				t.Fatal(res.AgentID)
			case !tc.ok && !errors.Is(err, ErrNotAuthenticated):
				t.Fatalf("got %v, %v; want ErrNotAuthenticated", res, err)
			}
			if err != nil {
				t.Log(err)
			}
		})
	}
}

// TestAttestServiceAccountNotAllowed: a valid projected token of a pod on
// the node whose service account is not in the allow list is refused.
func TestAttestServiceAccountNotAllowed(t *testing.T) {
	c := newCluster(t)
	c.kube.ServiceAccount(t, c.ns, "intruder")
	pod := c.agentPod(t, "intruder")
	_, err := attest(t, c.server(t), "prod", c.token(t, pod, "spire-server"))
	if !errors.Is(err, ErrNotAllowed) || !strings.Contains(err.Error(), c.ns+":intruder") {
		t.Fatalf("got %v, want ErrNotAllowed naming %s:intruder", err, c.ns)
	}
	// Allowed once listed.
	if _, err := attest(t, c.server(t, func(cc *ClusterConfig) {
		cc.ServiceAccountAllowList = append(cc.ServiceAccountAllowList, c.ns+":intruder")
	}), "prod", c.token(t, pod, "spire-server")); err != nil {
		t.Fatal(err)
	}
	// A token of the same service account in another namespace is not.
	other := c.kube.Namespace(t)
	c.kube.ServiceAccount(t, other, "spire-agent")
	pod = c.kube.Pod(t, kubetest.PodSpec{Namespace: other, ServiceAccount: "spire-agent", NodeName: c.node.Name()})
	tok := c.kube.TokenRequest(t, other, "spire-agent", kubetest.TokenOptions{Audiences: []string{"spire-server"}, Pod: pod})
	if _, err := attest(t, c.server(t), "prod", tok); !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("another namespace's spire-agent: %v, want ErrNotAllowed", err)
	}
}

// TestAttestDeletedServiceAccount: once the agent's service account is
// deleted, its tokens stop attesting. The API server caches token reviews
// (about 10 s), so the refusal is polled for.
func TestAttestDeletedServiceAccount(t *testing.T) {
	c := newCluster(t)
	s := c.server(t)
	tok := c.token(t, c.pod, "spire-server")
	if _, err := attest(t, s, "prod", tok); err != nil {
		t.Fatal(err)
	}
	c.kube.Delete(t, "/api/v1/namespaces/"+c.ns+"/serviceaccounts/spire-agent")
	start := time.Now()
	var last error
	err := testutil.Poll(90*time.Second, 250*time.Millisecond, func() (bool, error) {
		_, last = attest(t, s, "prod", tok)
		if last == nil {
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("the token of a deleted service account still attests: %v", err)
	}
	if !errors.Is(last, ErrNotAuthenticated) {
		t.Fatalf("after deleting the service account: %v, want ErrNotAuthenticated", last)
	}
	t.Logf("refused %s after the deletion: %v", time.Since(start).Round(time.Second), last)
}

// TestAttestPodOrNodeGone: a token whose pod was deleted (or replaced by
// another of the same name) or whose node was deleted is refused at once,
// although the API server's review cache still authenticates it.
func TestAttestPodOrNodeGone(t *testing.T) {
	c := newCluster(t)
	s := c.server(t)
	tok := c.token(t, c.pod, "spire-server")
	if _, err := attest(t, s, "prod", tok); err != nil {
		t.Fatal(err)
	}
	pods := "/api/v1/namespaces/" + c.ns + "/pods/"
	c.kube.Delete(t, pods+c.pod.Name())
	_, err := attest(t, s, "prod", tok)
	if !errors.Is(err, node.ErrRefused) {
		t.Fatalf("deleted pod: %v, want a refusal", err)
	}
	t.Log(err)
	// Another pod of the same name: not the one the token is bound to.
	c.kube.Pod(t, kubetest.PodSpec{Namespace: c.ns, Name: c.pod.Name(), ServiceAccount: "spire-agent", NodeName: c.node.Name()})
	_, err = attest(t, s, "prod", tok)
	if !errors.Is(err, node.ErrRefused) {
		t.Fatalf("replaced pod: %v, want a refusal", err)
	}
	t.Log(err)

	// The node.
	pod := c.agentPod(t, "spire-agent")
	tok = c.token(t, pod, "spire-server")
	if _, err := attest(t, s, "prod", tok); err != nil {
		t.Fatal(err)
	}
	c.kube.Delete(t, "/api/v1/nodes/"+c.node.Name())
	_, err = attest(t, s, "prod", tok)
	if !errors.Is(err, ErrNotBound) || !strings.Contains(err.Error(), "has no node") {
		t.Fatalf("deleted node: %v, want ErrNotBound", err)
	}
	// A node created again under the name (another UID) is not the one
	// the token was issued on.
	again := c.kube.Node(t, kubetest.NodeSpec{Name: c.node.Name()})
	res, err := attest(t, s, "prod", tok)
	if !errors.Is(err, ErrNotBound) || !strings.Contains(err.Error(), "not the one the token was issued on") {
		t.Fatalf("node %s created again (UID %s): %v, %v; want ErrNotBound", again.Name(), again.UID(), res, err)
	}
	t.Log(err)
}

// TestAttestOlderAPIServer: an API server older than Kubernetes 1.30
// names no node in its token reviews (the user's extra has only the pod):
// attestation works the same, without the check of the node against the
// token's. The older server is the real one behind a proxy that removes
// the node from TokenReview answers.
func TestAttestOlderAPIServer(t *testing.T) {
	c := newCluster(t)
	target, err := url.Parse(c.kube.URL)
	if err != nil {
		t.Fatal(err)
	}
	var stripped atomic.Int32
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = c.kube.HTTPClient().Transport
	proxy.ModifyResponse = func(r *http.Response) error {
		if !strings.HasSuffix(r.Request.URL.Path, "/tokenreviews") || r.StatusCode != http.StatusCreated {
			return nil
		}
		var review map[string]any
		if err := json.NewDecoder(r.Body).Decode(&review); err != nil {
			return err
		}
		r.Body.Close()
		if extra, ok := review["status"].(map[string]any)["user"].(map[string]any)["extra"].(map[string]any); ok {
			if _, ok := extra[extraNodeName]; ok {
				stripped.Add(1)
			}
			delete(extra, extraNodeName)
			delete(extra, extraNodeUID)
		}
		b, err := json.Marshal(review)
		if err != nil {
			return err
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		r.ContentLength = int64(len(b))
		r.Header.Set("Content-Length", strconv.Itoa(len(b)))
		return nil
	}
	ts := httptest.NewTLSServer(proxy)
	defer ts.Close()
	// The kubeconfig: the proxy's address and certificate, the server's
	// service account's token.
	dir := t.TempDir()
	ca := filepath.Join(dir, "proxy-ca.crt")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	tok := c.kube.TokenRequest(t, c.ns, "sigil-server", kubetest.TokenOptions{})
	kc := filepath.Join(dir, "kubeconfig")
	text := "current-context: c\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n" +
		"clusters: [{name: c, cluster: {server: '" + ts.URL + "', certificate-authority: " + ca + "}}]\n" +
		"users: [{name: u, user: {token: " + tok + "}}]\n"
	if err := os.WriteFile(kc, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	s := c.server(t, func(cc *ClusterConfig) { cc.KubeConfigFile = kc })
	res, err := attest(t, s, "prod", c.token(t, c.pod, "spire-server"))
	if err != nil {
		t.Fatal(err)
	}
	if stripped.Load() == 0 {
		t.Fatal("the proxy removed no node from a token review: the test proves nothing")
	}
	if want := "spiffe://example.org/spire/agent/k8s_psat/prod/" + c.node.UID(); res.AgentID.String() != want {
		t.Errorf("agent ID %s, want %s", res.AgentID, want)
	}
	if got := values(res.Selectors); !slices.Contains(got, "agent_node_uid:"+c.node.UID()) || !slices.Contains(got, "agent_node_label:topology.kubernetes.io/zone:eu-1") {
		t.Errorf("selectors %q", got)
	}
	// A deleted node is still refused.
	c.kube.Delete(t, "/api/v1/nodes/"+c.node.Name())
	if _, err := attest(t, s, "prod", c.token(t, c.pod, "spire-server")); !errors.Is(err, ErrNotBound) || !strings.Contains(err.Error(), "has no node") {
		t.Fatalf("deleted node: %v, want ErrNotBound", err)
	}
}

// TestAttestUnboundToken: a service-account token bound to no pod (a
// TokenRequest without boundObjectRef) does not attest a node.
func TestAttestUnboundToken(t *testing.T) {
	c := newCluster(t)
	tok := c.kube.TokenRequest(t, c.ns, "spire-agent", kubetest.TokenOptions{Audiences: []string{"spire-server"}})
	if _, err := attest(t, c.server(t), "prod", tok); !errors.Is(err, ErrNotBound) {
		t.Fatalf("got %v, want ErrNotBound", err)
	}
	// Nor garbage.
	if _, err := attest(t, c.server(t), "prod", "not-a-token"); !errors.Is(err, ErrNotAuthenticated) {
		t.Fatalf("got %v, want ErrNotAuthenticated", err)
	}
}

// TestAttestWithoutRBAC: a server whose credentials may not review tokens
// fails (an internal error naming the API server's answer), and refuses
// nothing: the agent's credential is not at fault.
func TestAttestWithoutRBAC(t *testing.T) {
	c := newCluster(t)
	c.kube.ServiceAccount(t, c.ns, "nobody")
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kc, []byte(c.kube.KubeconfigToken(c.kube.TokenRequest(t, c.ns, "nobody", kubetest.TokenOptions{}))), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := attest(t, c.server(t, func(cc *ClusterConfig) { cc.KubeConfigFile = kc }), "prod", c.token(t, c.pod, "spire-server"))
	if err == nil || errors.Is(err, node.ErrRefused) || errors.Is(err, node.ErrInvalid) || !strings.Contains(err.Error(), "403") {
		t.Fatalf("got %v, want an internal failure with the API server's 403", err)
	}
	t.Log(err)
}

// TestReattestationRereadsToken: the agent half reads the token file at
// every attestation, so a token the kubelet replaced (here: of another
// pod of the DaemonSet on the node) is what the next attestation proves.
func TestReattestationRereadsToken(t *testing.T) {
	c := newCluster(t)
	s := c.server(t)
	path := filepath.Join(t.TempDir(), "token")
	a, err := NewAgent(AgentConfig{Cluster: "prod", TokenPath: path})
	if err != nil {
		t.Fatal(err)
	}
	second := c.agentPod(t, "spire-agent")
	for _, pod := range []kubetest.Object{c.pod, second} {
		if err := os.WriteFile(path, []byte(c.token(t, pod, "spire-server")), 0o600); err != nil {
			t.Fatal(err)
		}
		sess, err := a.Begin(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		res, err := s.Attest(context.Background(), sess.Payload(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(values(res.Selectors), "agent_pod_uid:"+pod.UID()) {
			t.Fatalf("attested %q, want pod %s", values(res.Selectors), pod.UID())
		}
		if res.AgentID.String() != "spiffe://example.org/spire/agent/k8s_psat/prod/"+c.node.UID() {
			t.Fatalf("agent ID %s", res.AgentID)
		}
	}
}
