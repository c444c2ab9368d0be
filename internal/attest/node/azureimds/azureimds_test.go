package azureimds_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/attest/node/agentpath"
	"github.com/sigil-spiffe/sigil/internal/attest/node/azureimds"
	"github.com/sigil-spiffe/sigil/internal/attest/node/azureimds/armimds"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil/cloudfake"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func parseTemplate(text string) (azureimds.PathTemplate, error) { return agentpath.Parse(text) }

func parse(t *testing.T, data map[string]any) azureimds.ServerConfig {
	t.Helper()
	c, err := azureimds.ParseServerConfig(config.NewPlugin("NodeAttestor", azureimds.Type, data).Data(), parseTemplate)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newServer(t *testing.T, cfg azureimds.ServerConfig) *azureimds.Server {
	t.Helper()
	s, err := azureimds.NewServer(cfg, azureimds.ServerOptions{TrustDomain: td, ParseTemplate: parseTemplate, ARM: armimds.New(cfg)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// attestVM runs the agent half against the VM's metadata service and the
// server half against its answers, as over the stream.
func attestVM(t *testing.T, s *azureimds.Server, vm *cloudfake.AzureVM, domain string) (*node.Result, error) {
	t.Helper()
	a, err := azureimds.NewAgent(azureimds.AgentConfig{TenantDomain: domain, MetadataEndpoint: vm.IMDSURL()})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := a.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	return s.Attest(context.Background(), sess.Payload(), sess.Respond)
}

func values(r *node.Result) []string {
	var out []string
	for _, s := range r.Selectors {
		out = append(out, s.String())
	}
	slices.Sort(out)
	return out
}

// TestAttest: a standalone VM and a VM of a scale set attest through the
// challenge: the server verifies the attested document (the fake's test
// PKI, trusted through trust_bundle_path), looks the tenant ID up from its
// domain, reads the VM from Resource Manager with the tenant's app, and
// gives SPIRE's agent ID and selectors.
func TestAttest(t *testing.T) {
	az := cloudfake.NewAzure(t)
	s := newServer(t, parse(t, az.IMDSServerPluginData(t, t.TempDir())))
	vm := az.AddVM(&cloudfake.AzureVM{Name: "web-1", NSG: "web-nsg", Tags: map[string]string{"env": "prod", "secret": "x"}})
	r, err := attestVM(t, s, vm, cloudfake.AzureTenantDomain)
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://example.org/spire/agent/azure_imds/" + cloudfake.AzureTenant + "/" + cloudfake.AzureSubscription + "/" + vm.VMID; r.AgentID.String() != want || r.CanReattest {
		t.Errorf("agent ID %s (can re-attest %v), want %s", r.AgentID, r.CanReattest, want)
	}
	want := []string{
		"azure_imds:network-security-group:rg-test:web-nsg", "azure_imds:resource-group:rg-test", "azure_imds:subscription-id:" + cloudfake.AzureSubscription,
		"azure_imds:virtual-network-subnet:vnet-test:default", "azure_imds:virtual-network:vnet-test", "azure_imds:vm-location:westeurope",
		"azure_imds:vm-name:web-1", "azure_imds:vm-tag:env:prod",
	}
	if got := values(r); !slices.Equal(got, want) {
		t.Errorf("selectors\n got %q\nwant %q", got, want)
	}

	ss := az.AddVM(&cloudfake.AzureVM{ScaleSet: "workers", InstanceID: "3", Location: "eastus"})
	r, err = attestVM(t, s, ss, cloudfake.AzureTenantDomain)
	if err != nil {
		t.Fatal(err)
	}
	want = []string{
		"azure_imds:resource-group:rg-test", "azure_imds:subscription-id:" + cloudfake.AzureSubscription,
		"azure_imds:virtual-network-subnet:vnet-test:default", "azure_imds:virtual-network:vnet-test", "azure_imds:vm-location:eastus",
		"azure_imds:vm-name:workers_3", "azure_imds:vmss-name:workers",
	}
	if got := values(r); !slices.Equal(got, want) || !strings.HasSuffix(r.AgentID.String(), "/"+ss.VMID) {
		t.Errorf("scale set VM: agent ID %s, selectors\n got %q\nwant %q", r.AgentID, got, want)
	}
}

// TestRefusals: each forged, foreign, stale or unknown document is refused
// with its reason, before any agent ID is given.
func TestRefusals(t *testing.T) {
	az := cloudfake.NewAzure(t)
	dir := t.TempDir()
	data := az.IMDSServerPluginData(t, dir)
	tenants := data["tenants"].(map[string]any)
	tenants[cloudfake.AzureOtherDomain] = map[string]any{}
	data["metadata_endpoint"] = az.URL() // no managed identity there
	tenants[cloudfake.AzureTenantDomain].(map[string]any)["restrict_to_subscriptions"] = []string{cloudfake.AzureSubscription}
	s := newServer(t, parse(t, data))
	vm := az.AddVM(&cloudfake.AzureVM{Name: "web-1"})
	gone := az.AddVM(&cloudfake.AzureVM{Name: "gone", Deleted: true})
	// An attacker's PKI: its own root (untrusted) and a leaf naming the
	// metadata host; and an Azure-looking leaf of the trusted root that is
	// not for a metadata host.
	evil := cloudfake.NewAzurePKI(t, "evil", "eastus.metadata.azure.com")
	web := cloudfake.NewAzurePKI(t, "azure-imds", "www.example.com") // same root key and name, another leaf
	good := az.IMDS

	const nonce = "n0nceN0nceN0nceN0nceN0nceN0nce12"
	for _, c := range []struct {
		name   string
		nonce  string
		vm     *cloudfake.AzureVM
		domain string
		doc    cloudfake.AzureDocument
		want   error
		msg    string
	}{
		{name: "forged signature (attacker's own certificate)", doc: cloudfake.AzureDocument{
			Signers: []cloudfake.PKCS7Signer{{Key: evil.Key, Cert: evil.Leaf}}, Bag: []*x509.Certificate{evil.Leaf, evil.Intermediate}},
			want: azureimds.ErrBadSignature, msg: "certificate signed by unknown authority"},
		{name: "Azure's certificate carried, attacker's key signs", doc: cloudfake.AzureDocument{
			Signers: []cloudfake.PKCS7Signer{{Key: evil.Key, Cert: good.Leaf}}},
			want: azureimds.ErrBadSignature, msg: "does not verify"},
		{name: "wrong signer first in the bag", doc: cloudfake.AzureDocument{
			Signers: []cloudfake.PKCS7Signer{{Key: evil.Key, Cert: evil.Leaf}}, Bag: []*x509.Certificate{good.Leaf, good.Intermediate, evil.Leaf, evil.Intermediate}},
			want: azureimds.ErrBadSignature, msg: "unknown authority"},
		{name: "extra signer", doc: cloudfake.AzureDocument{
			Signers: []cloudfake.PKCS7Signer{{Key: good.Key, Cert: good.Leaf}, {Key: evil.Key, Cert: evil.Leaf}}, Bag: []*x509.Certificate{good.Leaf, good.Intermediate, evil.Leaf}},
			want: azureimds.ErrBadSignature, msg: "2 signers"},
		{name: "signer not in the bag", doc: cloudfake.AzureDocument{Bag: []*x509.Certificate{good.Intermediate}},
			want: azureimds.ErrBadSignature, msg: "no certificate of its signer"},
		{name: "not a metadata host", doc: cloudfake.AzureDocument{
			Signers: []cloudfake.PKCS7Signer{{Key: web.Key, Cert: web.Leaf}}, Bag: []*x509.Certificate{web.Leaf, web.Intermediate}},
			want: azureimds.ErrBadSignature, msg: "allowed_metadata_domains"},
		{name: "wrong nonce (replayed document)", nonce: "someOtherAttestationsNonce000000",
			want: azureimds.ErrBadDocument, msg: "not this attestation's challenge"},
		{name: "expired", doc: cloudfake.AzureDocument{Created: -7 * time.Hour}, want: azureimds.ErrBadDocument, msg: "expired"},
		{name: "other tenant", domain: "evil.onmicrosoft.com", want: azureimds.ErrTenantNotAllowed, msg: "evil.onmicrosoft.com"},
		{name: "other subscription", doc: cloudfake.AzureDocument{Subscription: "11111111-2222-4333-8444-555555555555"},
			want: azureimds.ErrSubscriptionNotAllowed, msg: "restrict_to_subscriptions"},
		{name: "tenant whose credentials cannot read the VM", domain: cloudfake.AzureOtherDomain, msg: "the server's managed identity"},
		{name: "unknown VM", vm: gone, want: azureimds.ErrNoSuchVM, msg: "lists no VM " + gone.VMID},
	} {
		t.Run(c.name, func(t *testing.T) {
			n, v, d := c.nonce, c.vm, c.domain
			if n == "" {
				n = nonce
			}
			if v == nil {
				v = vm
			}
			if d == "" {
				d = cloudfake.AzureTenantDomain
			}
			answer, _ := json.Marshal(map[string]any{"document": az.AttestedDocument(v, n, c.doc), "metadata": map[string]any{"agentDomain": d}})
			r, err := s.Check(context.Background(), nonce, answer)
			if err == nil {
				t.Fatalf("attested as %s", r.AgentID)
			}
			if c.want != nil && !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) || len(err.Error()) > 600 {
				t.Errorf("error %v, want %v containing %q", err, c.want, c.msg)
			}
		})
	}
	// The same document with its own nonce is accepted: the cases above
	// differ from it only in what they name.
	answer, _ := json.Marshal(map[string]any{"document": az.AttestedDocument(vm, nonce, cloudfake.AzureDocument{}), "metadata": map[string]any{"agentDomain": cloudfake.AzureTenantDomain}})
	if _, err := s.Check(context.Background(), nonce, answer); err != nil {
		t.Fatalf("the genuine document: %v", err)
	}
}

// TestTokenAuth: a tenant whose app authenticates with a client assertion
// (token_auth): the server reads the JWT from token_path and Resource
// Manager is read with the app's token; a wrong assertion fails the
// attestation (the server's error, not a refusal).
func TestTokenAuth(t *testing.T) {
	az := cloudfake.NewAzure(t)
	dir := t.TempDir()
	const app, jwt = "0a1b2c3d-0000-4000-8000-00000000a003", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzaWdpbCJ9.c2lnbmF0dXJl"
	az.AddAppAssertion(cloudfake.AzureTenant, app, jwt, cloudfake.AzureSubscription)
	path := dir + "/azure-token"
	if err := os.WriteFile(path, []byte(jwt+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	data := map[string]any{
		"tenants":           map[string]any{cloudfake.AzureTenantDomain: map[string]any{"token_auth": map[string]any{"app_id": app, "token_path": path}}},
		"trust_bundle_path": az.IMDS.WriteRoot(t, dir), "login_endpoint": az.URL(), "management_endpoint": az.URL(),
	}
	vm := az.AddVM(&cloudfake.AzureVM{Name: "tok-1"})
	if _, err := attestVM(t, newServer(t, parse(t, data)), vm, cloudfake.AzureTenantDomain); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJvdGhlciJ9.c2ln"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := attestVM(t, newServer(t, parse(t, data)), az.AddVM(&cloudfake.AzureVM{Name: "tok-2"}), cloudfake.AzureTenantDomain)
	if err == nil || errors.Is(err, node.ErrRefused) || !strings.Contains(err.Error(), "AADSTS700021") {
		t.Fatalf("wrong assertion: %v", err)
	}
}

// TestConfig: SPIRE's keys are read, bad values refused.
func TestConfig(t *testing.T) {
	dir := t.TempDir()
	az := cloudfake.NewAzure(t)
	c := parse(t, az.IMDSServerPluginData(t, dir))
	if len(c.Tenants) != 1 || c.Tenants[0].AppID == "" || len(c.Roots) != 1 || c.Tenants[0].AllowedVMTags[0] != "env" {
		t.Errorf("config %+v", c)
	}
	for _, b := range []struct {
		data map[string]any
		want string
	}{
		{map[string]any{}, "at least one tenant"},
		{map[string]any{"tenants": map[string]any{"a.com": map[string]any{"token_auth": map[string]any{"app_id": "x"}}}}, "token_auth needs app_id and token_path"},
		{map[string]any{"tenants": map[string]any{"a.com": map[string]any{"token_auth": map[string]any{"app_id": "x", "token_path": "/t"}, "secret_auth": map[string]any{"app_id": "x", "app_secret": "s"}}}}, "mutually exclusive"},
		{map[string]any{"tenants": map[string]any{"a.com": map[string]any{"secret_auth": map[string]any{"app_id": "x"}}}}, "needs app_id and app_secret"},
		{map[string]any{"tenants": map[string]any{"a.com": map[string]any{"restrict_to_subscriptions": []string{"sub"}}}}, "is not a subscription ID"},
		{map[string]any{"tenants": map[string]any{"a.com": map[string]any{}}, "trust_bundle_path": dir + "/none.pem"}, "none.pem"},
		{map[string]any{"tenants": map[string]any{"a.com": map[string]any{}}, "agent_path_template": "{{ .Nope"}, "agent_path_template"},
	} {
		_, err := azureimds.ParseServerConfig(config.NewPlugin("NodeAttestor", azureimds.Type, b.data).Data(), parseTemplate)
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%v: error %v, want %q", b.data, err, b.want)
		}
	}
	if _, err := azureimds.ParseAgentConfig(config.NewPlugin("NodeAttestor", azureimds.Type, map[string]any{}).Data()); err == nil || !strings.Contains(err.Error(), "tenant_domain") {
		t.Errorf("agent without tenant_domain: %v", err)
	}
}

// routeTo sends the requests to www.microsoft.com to srv, and records the
// hosts asked.
type routeTo struct {
	srv   *httptest.Server
	hosts []string
}

func (r *routeTo) RoundTrip(req *http.Request) (*http.Response, error) {
	r.hosts = append(r.hosts, req.URL.Host)
	if req.URL.Host != "www.microsoft.com" {
		return http.DefaultTransport.RoundTrip(req)
	}
	out := req.Clone(req.Context())
	out.URL.Scheme, out.URL.Host = "http", strings.TrimPrefix(r.srv.URL, "http://")
	return http.DefaultTransport.RoundTrip(out)
}

// TestIntermediateFetched: a document carrying only its signer's
// certificate (as Azure's do) is verified with the intermediate fetched from
// the certificate's CA issuers URL on www.microsoft.com; one that cannot be
// fetched, or whose URL is on another host, is refused.
func TestIntermediateFetched(t *testing.T) {
	az := cloudfake.NewAzure(t)
	serve := true
	ca := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !serve || r.URL.EscapedPath() != strings.TrimPrefix(az.IMDS.IntermediateURL(), "http://www.microsoft.com") {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(az.IMDS.Intermediate.Raw)
	}))
	defer ca.Close()
	rt := &routeTo{srv: ca}
	cfg := parse(t, az.IMDSServerPluginData(t, t.TempDir()))
	s, err := azureimds.NewServer(cfg, azureimds.ServerOptions{TrustDomain: td, ParseTemplate: parseTemplate, ARM: armimds.New(cfg), HTTPClient: &http.Client{Transport: rt}})
	if err != nil {
		t.Fatal(err)
	}
	vm := az.AddVM(&cloudfake.AzureVM{Name: "web-1"})
	const nonce = "n0nceN0nceN0nceN0nceN0nceN0nce12"
	answer := func(o cloudfake.AzureDocument) []byte {
		b, _ := json.Marshal(map[string]any{"document": az.AttestedDocument(vm, nonce, o), "metadata": map[string]any{"agentDomain": cloudfake.AzureTenantDomain}})
		return b
	}
	leafOnly := cloudfake.AzureDocument{Bag: []*x509.Certificate{az.IMDS.Leaf}}
	if _, err := s.Check(context.Background(), nonce, answer(leafOnly)); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(rt.hosts, "www.microsoft.com") {
		t.Fatalf("no intermediate fetched from www.microsoft.com (requests to %q)", rt.hosts)
	}
	serve = false
	if _, err := s.Check(context.Background(), nonce, answer(leafOnly)); !errors.Is(err, azureimds.ErrBadSignature) || !strings.Contains(err.Error(), "its intermediate") {
		t.Fatalf("intermediate not found: %v", err)
	}
}
