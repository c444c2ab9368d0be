package kubetest_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"os"
	"regexp"
	"slices"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/testutil/kubetest"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }

// TestVersionMatchesTools: the release the helper looks for is the one
// tools/kube/build.sh builds (its go.mod's k8s.io/kubernetes).
func TestVersionMatchesTools(t *testing.T) {
	b, err := os.ReadFile("../../../tools/kube/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*k8s\.io/kubernetes (v\S+)`).FindSubmatch(b)
	if m == nil {
		t.Fatal("tools/kube/go.mod requires no k8s.io/kubernetes")
	}
	if string(m[1]) != kubetest.Version {
		t.Fatalf("tools/kube builds kubernetes %s, kubetest.Version is %s", m[1], kubetest.Version)
	}
}

// TestTokenRequestAndReview: a token TokenRequest issues for a service
// account, bound to a pod, passes TokenReview for its audience with the
// pod's name and UID, and fails it for another audience.
func TestTokenRequestAndReview(t *testing.T) {
	s := kubetest.Shared(t)
	ns := s.Namespace(t)
	s.ServiceAccount(t, ns, "agent")
	node := s.Node(t, kubetest.NodeSpec{Labels: map[string]string{"zone": "a"}})
	pod := s.Pod(t, kubetest.PodSpec{Namespace: ns, ServiceAccount: "agent", NodeName: node.Name(), HostIP: "192.0.2.7"})
	if st, _ := pod["status"].(map[string]any); st["hostIP"] != "192.0.2.7" {
		t.Fatalf("pod status %v: hostIP not set", pod["status"])
	}
	tok := s.TokenRequest(t, ns, "agent", kubetest.TokenOptions{Audiences: []string{"spire-server"}, Pod: pod})

	ctx := context.Background()
	r, err := s.ReviewToken(ctx, tok, []string{"spire-server"})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Authenticated || r.User.Username != "system:serviceaccount:"+ns+":agent" || !slices.Contains(r.Audiences, "spire-server") {
		t.Fatalf("review: %+v", r)
	}
	if got := r.User.Extra["authentication.kubernetes.io/pod-uid"]; len(got) != 1 || got[0] != pod.UID() {
		t.Fatalf("review extra %v: want pod-uid %s", r.User.Extra, pod.UID())
	}
	r, err = s.ReviewToken(ctx, tok, []string{"someone-else"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Authenticated {
		t.Fatalf("a token for spire-server passed a review for someone-else: %+v", r)
	}

	// Deleting the pod (grace period 0: no kubelet) is immediate.
	s.Delete(t, "/api/v1/namespaces/"+ns+"/pods/"+pod.Name())
	err = s.Do(ctx, http.MethodGet, "/api/v1/namespaces/"+ns+"/pods/"+pod.Name(), nil, nil)
	if !kubetest.IsNotFound(err) {
		t.Fatalf("get a deleted pod: %v, want not found", err)
	}
}

// TestClientCertAndRBAC: the client CA issues certificates the API
// server accepts, and a service account granted a rule can do what it
// allows and nothing else.
func TestClientCertAndRBAC(t *testing.T) {
	s := kubetest.Shared(t)
	ns := s.Namespace(t)
	s.ServiceAccount(t, ns, "reader")
	s.Grant(t, ns, "reader", kubetest.Rule("", "nodes", "get"))
	tok := s.TokenRequest(t, ns, "reader", kubetest.TokenOptions{})
	node := s.Node(t, kubetest.NodeSpec{})
	ctx := context.Background()
	// Grant waited for the authorizer.
	if err := s.DoAs(ctx, tok, http.MethodGet, "/api/v1/nodes/"+node.Name(), nil, nil); err != nil {
		t.Fatalf("the granted service account cannot get a node: %v", err)
	}
	err := s.DoAs(ctx, tok, http.MethodGet, "/api/v1/namespaces/"+ns+"/pods", nil, nil)
	var se *kubetest.StatusError
	if !asStatus(err, &se) || se.Code != http.StatusForbidden {
		t.Fatalf("list pods without a grant: %v, want 403", err)
	}
	if err := s.DoAs(ctx, "wrong", http.MethodGet, "/api", nil, nil); !asStatus(err, &se) || se.Code != http.StatusUnauthorized {
		t.Fatalf("a wrong token: %v, want 401", err)
	}
	if _, err := os.Stat(s.AdminKubeconfig); err != nil {
		t.Fatal(err)
	}
	// The admin's client certificate authenticates.
	pair, err := tls.LoadX509KeyPair(s.AdminCertFile, s.AdminKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	tr := s.HTTPClient().Transport.(*http.Transport).Clone()
	tr.TLSClientConfig.Certificates = []tls.Certificate{pair}
	c := &http.Client{Transport: tr}
	defer c.CloseIdleConnections()
	resp, err := c.Get(s.URL + "/api/v1/nodes/" + node.Name())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET a node with the admin's client certificate: %s", resp.Status)
	}
}

func asStatus(err error, se **kubetest.StatusError) bool {
	e, ok := err.(*kubetest.StatusError)
	if ok {
		*se = e
	}
	return ok
}
