package kubeconfig

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/kubeapi"
	"github.com/sigil-spiffe/sigil/internal/testutil/kubetest"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }

// TestClientCredentials: a client authenticates as its kubeconfig's user
// says (bearer token, tokenFile, client certificate) or as a pod's service
// account, and reads its files at every request: a rotated token is used
// at once.
func TestClientCredentials(t *testing.T) {
	k := kubetest.Shared(t)
	ns := k.Namespace(t)
	k.ServiceAccount(t, ns, "reader")
	k.Grant(t, ns, "reader", kubetest.Rule("", "nodes", "get"))
	node := k.Node(t, kubetest.NodeSpec{Labels: map[string]string{"a": "b"}})
	tok := k.TokenRequest(t, ns, "reader", kubetest.TokenOptions{})
	dir := t.TempDir()
	ctx := context.Background()

	get := func(t *testing.T, c *kubeapi.Client) error {
		t.Helper()
		n, err := c.GetNode(ctx, node.Name())
		if err != nil {
			return err
		}
		if n.Metadata.UID != node.UID() || n.Metadata.Labels["a"] != "b" {
			t.Fatalf("node %+v, want UID %s", n.Metadata, node.UID())
		}
		return nil
	}
	write := func(name, data string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	t.Run("token", func(t *testing.T) {
		c := kubeapi.New(Loader(write("token.kubeconfig", k.KubeconfigToken(tok))))
		defer c.Close()
		if err := get(t, c); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("tokenFile rotated", func(t *testing.T) {
		tf := write("token", tok+"\n")
		kc := strings.Replace(k.KubeconfigToken(""), "    token: \n", "    tokenFile: token\n", 1)
		c := kubeapi.New(Loader(write("tokenfile.kubeconfig", kc)))
		defer c.Close()
		if err := get(t, c); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(tf, []byte("revoked"), 0o600); err != nil {
			t.Fatal(err)
		}
		var se *kubeapi.StatusError
		if err := get(t, c); !errors.As(err, &se) || se.Code != http.StatusUnauthorized {
			t.Fatalf("with a replaced token: %v, want 401", err)
		}
		if err := os.WriteFile(tf, []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := get(t, c); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("client certificate", func(t *testing.T) {
		user := kubetest.Name("cert-user")
		cert, key := k.ClientCert(t, dir, user)
		c := kubeapi.New(Loader(write("cert.kubeconfig", k.KubeconfigCert(cert, key))))
		defer c.Close()
		var se *kubeapi.StatusError
		if err := get(t, c); !errors.As(err, &se) || se.Code != http.StatusForbidden || !strings.Contains(se.Message, user) {
			t.Fatalf("before the grant: %v, want 403 naming %s", err, user)
		}
		k.GrantUser(t, user, kubetest.Rule("", "nodes", "get"))
		if err := get(t, c); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("in-cluster", func(t *testing.T) {
		sa := t.TempDir()
		old := inClusterDir
		inClusterDir = sa
		t.Cleanup(func() { inClusterDir = old })
		if err := os.WriteFile(filepath.Join(sa, "token"), []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sa, "ca.crt"), k.CAPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		u, err := url.Parse(k.URL)
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv("KUBERNETES_SERVICE_HOST", u.Hostname())
		t.Setenv("KUBERNETES_SERVICE_PORT", u.Port())
		c := kubeapi.New(Loader(""))
		defer c.Close()
		if err := c.Check(); err != nil {
			t.Fatal(err)
		}
		if err := get(t, c); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("untrusted server", func(t *testing.T) {
		kc := strings.Replace(k.KubeconfigToken(tok), "certificate-authority: "+k.CAFile, "certificate-authority: "+write("other-ca.crt", string(testca.CertsPEM(testca.New(t).Cert))), 1)
		c := kubeapi.New(Loader(write("untrusted.kubeconfig", kc)))
		defer c.Close()
		if err := get(t, c); err == nil || !strings.Contains(err.Error(), "x509: certificate signed by unknown authority") {
			t.Fatalf("a server signed by another CA: %v", err)
		}
	})
}
