package kubeapi

import (
	"context"
	"errors"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/testutil/kubetest"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }

// TestClientCalls: TokenReview, pods and nodes, and a missing object is
// IsNotFound; connections are reused while the TLS material is the same.
func TestClientCalls(t *testing.T) {
	k := kubetest.Shared(t)
	ns := k.Namespace(t)
	k.ServiceAccount(t, ns, "agent")
	node := k.Node(t, kubetest.NodeSpec{})
	pod := k.Pod(t, kubetest.PodSpec{Namespace: ns, ServiceAccount: "agent", NodeName: node.Name(), HostIP: "192.0.2.1", Labels: map[string]string{"app": "x"}})
	var mu sync.Mutex
	cfg := Config{Server: k.URL, CAPEM: k.CAPEM, Token: k.Token}
	c := New(func() (*Config, error) {
		mu.Lock()
		defer mu.Unlock()
		cp := cfg
		return &cp, nil
	})
	defer c.Close()
	ctx := context.Background()

	p, err := c.GetPod(ctx, ns, pod.Name())
	if err != nil {
		t.Fatal(err)
	}
	if p.Metadata.UID != pod.UID() || p.Spec.NodeName != node.Name() || p.Status.HostIP != "192.0.2.1" || p.Metadata.Labels["app"] != "x" || p.Spec.ServiceAccountName != "agent" {
		t.Fatalf("pod %+v", p)
	}
	tr := c.transport
	if _, err := c.GetPod(ctx, ns, "missing"); !IsNotFound(err) {
		t.Fatalf("a missing pod: %v, want not found", err)
	}
	if _, err := c.GetNode(ctx, "missing"); !IsNotFound(err) {
		t.Fatalf("a missing node: %v, want not found", err)
	}
	if c.transport != tr {
		t.Fatal("a new transport for the same TLS material")
	}

	tok := k.TokenRequest(t, ns, "agent", kubetest.TokenOptions{Audiences: []string{"x"}, Pod: pod})
	st, err := c.TokenReview(ctx, tok, []string{"x"})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Authenticated || st.User.Username != "system:serviceaccount:"+ns+":agent" || st.User.Extra[extraPodUIDKey][0] != pod.UID() || st.Audiences[0] != "x" {
		t.Fatalf("review %+v", st)
	}
	st, err = c.TokenReview(ctx, tok, []string{"y"})
	if err != nil {
		t.Fatal(err)
	}
	if st.Authenticated || st.Error == "" {
		t.Fatalf("review for another audience %+v", st)
	}

	// Another CA (the same certificate plus a comment): new TLS
	// material, a new transport; a token change alone keeps it.
	mu.Lock()
	cfg.Token = k.TokenRequest(t, ns, "agent", kubetest.TokenOptions{})
	mu.Unlock()
	var se *StatusError
	if _, err := c.GetNode(ctx, node.Name()); !errors.As(err, &se) || se.Code != http.StatusForbidden {
		t.Fatalf("as the agent's service account: %v, want 403", err)
	}
	if c.transport != tr {
		t.Fatal("a new transport for a new token")
	}
	mu.Lock()
	cfg.Token, cfg.CAPEM = k.Token, append([]byte("# rotated\n"), k.CAPEM...)
	mu.Unlock()
	if _, err := c.GetNode(ctx, node.Name()); err != nil {
		t.Fatal(err)
	}
	if c.transport == tr {
		t.Fatal("the transport was kept although the CA changed")
	}
	mu.Lock()
	cfg.CAPEM = testca.CertsPEM(testca.New(t).Cert)
	mu.Unlock()
	if _, err := c.GetNode(ctx, node.Name()); err == nil || !strings.Contains(err.Error(), "x509: certificate signed by unknown authority") {
		t.Fatalf("a server signed by another CA: %v", err)
	}
}

const extraPodUIDKey = "authentication.kubernetes.io/pod-uid"
