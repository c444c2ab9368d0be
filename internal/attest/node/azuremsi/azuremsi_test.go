package azuremsi_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/attest/node/agentpath"
	"github.com/sigil-spiffe/sigil/internal/attest/node/azuremsi"
	"github.com/sigil-spiffe/sigil/internal/attest/node/azuremsi/armapi"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil/cloudfake"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func parseTemplate(text string) (azuremsi.PathTemplate, error) { return agentpath.Parse(text) }

func parse(t *testing.T, data map[string]any) azuremsi.ServerConfig {
	t.Helper()
	c, err := azuremsi.ParseServerConfig(config.NewPlugin("NodeAttestor", azuremsi.Type, data).Data(), parseTemplate)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newServer(t *testing.T, cfg azuremsi.ServerConfig, now func() time.Time) *azuremsi.Server {
	t.Helper()
	s, err := azuremsi.NewServer(cfg, azuremsi.ServerOptions{TrustDomain: td, ParseTemplate: parseTemplate, ARM: armapi.New(cfg), Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// payload runs the agent half against a VM's metadata service.
func payload(t *testing.T, vm *cloudfake.AzureVM, resource string) []byte {
	t.Helper()
	a, err := azuremsi.NewAgent(azuremsi.AgentConfig{MetadataEndpoint: vm.IMDSURL(), ResourceID: resource})
	if err != nil {
		t.Fatal(err)
	}
	s, err := a.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	return s.Payload()
}

func attest(s *azuremsi.Server, p []byte) (*node.Result, error) {
	return s.Attest(context.Background(), p, func(context.Context, []byte) ([]byte, error) {
		return nil, errors.New("azure_msi sent a challenge")
	})
}

func values(r *node.Result) []string {
	var out []string
	for _, s := range r.Selectors {
		out = append(out, s.String())
	}
	slices.Sort(out)
	return out
}

// TestAttest: a VM attests with its managed identity's token; the server
// verifies it with Azure AD's keys (OpenID discovery, JWKS) and reads the
// VM and its network interface from Resource Manager with the tenant's app
// credentials, or with the server's own managed identity.
func TestAttest(t *testing.T) {
	az := cloudfake.NewAzure(t)
	vm := az.AddVM(&cloudfake.AzureVM{Name: "web-1", NSG: "web-nsg"})
	s := newServer(t, parse(t, az.ServerPluginData()), nil)
	res, err := attest(s, payload(t, vm, ""))
	if err != nil {
		t.Fatal(err)
	}
	if res.AgentID.String() != "spiffe://example.org/spire/agent/azure_msi/"+cloudfake.AzureTenant+"/"+vm.PrincipalID || res.CanReattest {
		t.Fatalf("agent ID %s, can re-attest %v", res.AgentID, res.CanReattest)
	}
	want := []string{
		"azure_msi:network-security-group:rg-test:web-nsg", "azure_msi:subscription-id:" + cloudfake.AzureSubscription,
		"azure_msi:virtual-network-subnet:rg-test:vnet-test:default", "azure_msi:virtual-network:rg-test:vnet-test", "azure_msi:vm-name:rg-test:web-1",
	}
	if got := values(res); !slices.Equal(got, want) {
		t.Fatalf("selectors\n got %q\nwant %q", got, want)
	}
	// Keys and the app's token are cached.
	if _, err := attest(s, payload(t, vm, "")); err != nil {
		t.Fatal(err)
	}
	if az.Calls("keys") != 1 || az.Calls("token") != 1 {
		t.Fatalf("%d key fetches, %d app tokens for two attestations", az.Calls("keys"), az.Calls("token"))
	}

	// Without app credentials the server uses its own managed identity
	// (its VM's metadata service) and its VM's subscription; a custom
	// resource_id and agent_path_template.
	server := az.AddVM(&cloudfake.AzureVM{Name: "sigil-server"})
	res, err = attest(newServer(t, parse(t, map[string]any{
		"tenants":        map[string]any{cloudfake.AzureTenant: map[string]any{"resource_id": "api://sigil"}},
		"login_endpoint": az.URL(), "management_endpoint": az.URL(), "metadata_endpoint": server.IMDSURL(),
		"agent_path_template": "/azure/{{ .PrincipalID }}",
	}), nil), payload(t, vm, "api://sigil"))
	if err != nil {
		t.Fatal(err)
	}
	if res.AgentID.String() != "spiffe://example.org/spire/agent/azure/"+vm.PrincipalID || !slices.Contains(values(res), "azure_msi:vm-name:rg-test:web-1") {
		t.Fatalf("managed identity: %s %q", res.AgentID, values(res))
	}
}

// TestRefusals: forged tokens, other tenants, audiences and issuers,
// expired tokens, VMs Resource Manager does not list: each refused with
// its own error; wrong app credentials are a failure.
func TestRefusals(t *testing.T) {
	az := cloudfake.NewAzure(t)
	good := az.AddVM(&cloudfake.AzureVM{Name: "good"})
	forger := az.AddVM(&cloudfake.AzureVM{Name: "forger", Key: cloudfake.RSAKey(t, "azure-forger", 2048), KeyID: "forged"})
	impostor := az.AddVM(&cloudfake.AzureVM{Name: "impostor", Key: cloudfake.RSAKey(t, "azure-forger", 2048), KeyID: az.KeyID})
	otherTenant := az.AddVM(&cloudfake.AzureVM{Name: "other", Tenant: "11111111-2222-4333-8444-555555555555"})
	expired := az.AddVM(&cloudfake.AzureVM{Name: "expired", Issued: -25 * time.Hour})
	deleted := az.AddVM(&cloudfake.AzureVM{Name: "deleted", Deleted: true})
	s := newServer(t, parse(t, az.ServerPluginData()), nil)

	sign := func(claims map[string]any) []byte {
		signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: az.Key}, (&jose.SignerOptions{}).WithHeader("kid", az.KeyID))
		tok, _ := jwt.Signed(signer).Claims(claims).Serialize()
		b, _ := json.Marshal(map[string]string{"token": tok})
		return b
	}
	now := time.Now()
	claims := func(iss string) map[string]any {
		return map[string]any{"iss": iss, "aud": azuremsi.DefaultResourceID, "tid": cloudfake.AzureTenant, "sub": good.PrincipalID, "exp": now.Add(time.Hour).Unix(), "nbf": now.Unix()}
	}
	badSub := claims("https://sts.windows.net/" + cloudfake.AzureTenant + "/")
	badSub["sub"] = "x' or '1' eq '1"

	for _, tc := range []struct {
		name    string
		payload []byte
		is      error
		want    string
	}{
		{"unknown key", payload(t, forger, ""), azuremsi.ErrBadSignature, `signed with unknown key "forged", not one of Azure AD's keys`},
		{"forged under Azure AD's key ID", payload(t, impostor, ""), azuremsi.ErrBadSignature, `does not verify with Azure AD's key "fake-azure-ad-key-1"`},
		{"another tenant", payload(t, otherTenant, ""), azuremsi.ErrTenantNotAllowed, "tenant 11111111-2222-4333-8444-555555555555 is not configured"},
		{"another audience", payload(t, good, "https://vault.azure.net"), azuremsi.ErrBadClaims, `audience "https://vault.azure.net", not the tenant's resource_id "https://management.azure.com/"`},
		{"another issuer", sign(claims("https://sts.windows.net/11111111-2222-4333-8444-555555555555/")), azuremsi.ErrBadClaims, "is not tenant " + cloudfake.AzureTenant + "'s"},
		{"expired", payload(t, expired, ""), azuremsi.ErrBadClaims, "token is expired"},
		{"principal not a GUID", sign(badSub), node.ErrInvalid, "is not a GUID"},
		{"deleted VM", payload(t, deleted, ""), azuremsi.ErrNoSuchVM, "Resource Manager lists no virtual machine whose identity is principal " + deleted.PrincipalID},
		{"no token", []byte(`{}`), node.ErrInvalid, "has no token"},
		{"not JSON", []byte(`eyJ`), node.ErrInvalid, "not JSON"},
		{"HS256", []byte(`{"token":"eyJhbGciOiJIUzI1NiJ9.e30.ZRrHA1JJJW8opsbCGfG_HACGpVUMN_a9IV7pAx_Zmeo"}`), node.ErrInvalid, "not a signed JWT"},
		{"oversized", make([]byte, azuremsi.MaxPayloadSize+1), node.ErrInvalid, "more than 32768"},
	} {
		_, err := attest(s, tc.payload)
		t.Logf("%s: %v", tc.name, err)
		if !errors.Is(err, tc.is) || err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %v containing %q", tc.name, err, tc.is, tc.want)
		}
	}
	// A wrong app secret is the server's failure, not a refusal.
	data := az.ServerPluginData()
	data["tenants"].(map[string]any)[cloudfake.AzureTenant].(map[string]any)["app_secret"] = "wrong"
	_, err := attest(newServer(t, parse(t, data), nil), payload(t, good, ""))
	if err == nil || errors.Is(err, node.ErrRefused) || !strings.Contains(err.Error(), "AADSTS7000215") {
		t.Fatalf("wrong app secret: %v", err)
	}
	// An app without access to the subscription: a failure too.
	az.AddApp(cloudfake.AzureTenant, "0a1b2c3d-0000-4000-8000-00000000a002", "s2")
	data = az.ServerPluginData()
	data["tenants"].(map[string]any)[cloudfake.AzureTenant].(map[string]any)["app_id"] = "0a1b2c3d-0000-4000-8000-00000000a002"
	data["tenants"].(map[string]any)[cloudfake.AzureTenant].(map[string]any)["app_secret"] = "s2"
	_, err = attest(newServer(t, parse(t, data), nil), payload(t, good, ""))
	if err == nil || errors.Is(err, node.ErrRefused) || !strings.Contains(err.Error(), "AuthorizationFailed") {
		t.Fatalf("app without access: %v", err)
	}
}

// TestAgent: the agent asks the metadata service with Metadata: true for a
// token of its resource and sends it as {"token"}; errors name the status.
func TestAgent(t *testing.T) {
	var got *http.Request
	md := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r
		if r.URL.Query().Get("resource") == "bad" {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":"invalid_resource"}`))
			return
		}
		_, _ = w.Write([]byte(`{"access_token":"a.b.c","expires_in":"86399"}`))
	}))
	defer md.Close()
	a, err := azuremsi.NewAgent(azuremsi.AgentConfig{MetadataEndpoint: md.URL})
	if err != nil {
		t.Fatal(err)
	}
	s, err := a.Begin(context.Background())
	if err != nil || string(s.Payload()) != `{"token":"a.b.c"}` {
		t.Fatalf("%s %v", s.Payload(), err)
	}
	if got.Header.Get("Metadata") != "true" || got.URL.Path != "/metadata/identity/oauth2/token" ||
		got.URL.Query().Get("resource") != "https://management.azure.com/" || got.URL.Query().Get("api-version") != "2018-02-01" {
		t.Fatalf("request %s %v", got.URL, got.Header)
	}
	a, _ = azuremsi.NewAgent(azuremsi.AgentConfig{MetadataEndpoint: md.URL, ResourceID: "bad"})
	if _, err := a.Begin(context.Background()); err == nil || !strings.Contains(err.Error(), "400 Bad Request") || !strings.Contains(err.Error(), "invalid_resource") {
		t.Fatalf("refused resource: %v", err)
	}
}

func TestParseConfig(t *testing.T) {
	c := parse(t, map[string]any{
		"tenants": map[string]any{
			cloudfake.AzureTenant:                  map[string]any{"resource_id": "api://x"},
			"11111111-2222-4333-8444-555555555555": map[string]any{"subscription_id": cloudfake.AzureSubscription, "app_id": "a", "app_secret": "s"},
		},
		"agent_path_template": "/{{ .TenantID }}",
	})
	slices.SortFunc(c.Tenants, func(a, b azuremsi.Tenant) int { return strings.Compare(b.ID, a.ID) })
	if len(c.Tenants) != 2 || c.Tenants[0].Audience() != "api://x" || c.Tenants[1].AppSecret != "s" {
		t.Fatalf("%+v", c)
	}
	for _, tc := range []struct {
		data map[string]any
		want string
	}{
		{map[string]any{}, "at least one tenant is required"},
		{map[string]any{"tenants": map[string]any{"contoso": map[string]any{}}}, `tenant "contoso": the tenant ID is not a GUID`},
		{map[string]any{"tenants": map[string]any{cloudfake.AzureTenant: map[string]any{"app_id": "a"}}}, "app_secret is missing"},
		{map[string]any{"tenants": map[string]any{cloudfake.AzureTenant: map[string]any{"appid": "a"}}}, "appid"},
		{map[string]any{"tenants": map[string]any{cloudfake.AzureTenant: map[string]any{}}, "agent_path_template": "/{{"}, "agent_path_template"},
		{map[string]any{"tenants": map[string]any{cloudfake.AzureTenant: map[string]any{}}, "login_endpoint": "login.microsoftonline.com"}, "login_endpoint"},
	} {
		_, err := azuremsi.ParseServerConfig(config.NewPlugin("NodeAttestor", azuremsi.Type, tc.data).Data(), parseTemplate)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.data, err, tc.want)
		}
	}
	if _, err := azuremsi.ParseAgentConfig(config.NewPlugin("NodeAttestor", azuremsi.Type, map[string]any{"resource_id": "api://x"}).Data()); err != nil {
		t.Fatal(err)
	}
	if _, err := azuremsi.ParseAgentConfig(config.NewPlugin("NodeAttestor", azuremsi.Type, map[string]any{"metadata_endpoint": "169.254.169.254"}).Data()); err == nil {
		t.Fatal("metadata_endpoint without scheme accepted")
	}
}

func TestSelectorKind(t *testing.T) {
	k := azuremsi.SelectorKind()
	for _, v := range []string{"subscription-id:" + cloudfake.AzureSubscription, "vm-name:rg:vm", "network-security-group:rg:nsg", "virtual-network:rg:vnet", "virtual-network-subnet:rg:vnet:sn"} {
		if err := k.Check(v); err != nil {
			t.Errorf("%s: %v", v, err)
		}
	}
	for _, v := range []string{"subscription-id:x", "vm-name:vm", "virtual-network-subnet:rg:vnet", "vm:rg:vm", "virtual-network:rg:"} {
		if err := k.Check(v); err == nil {
			t.Errorf("%s: accepted", v)
		}
	}
}
