package cloudfake

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Azure is a fake Azure: VMs with their instance metadata services, and
// one endpoint for Azure AD (/common/.well-known/openid-configuration, its
// JWKS, and /{tenant}/oauth2/v2.0/token for apps' client credentials) and
// Resource Manager (resources list by principal, virtualMachines and
// networkInterfaces get). It signs tokens with test keys.
type Azure struct {
	tb testing.TB
	// Key signs the tokens, under KeyID.
	Key   *rsa.PrivateKey
	KeyID string
	cert  *x509.Certificate // Key's certificate, in the JWKS's x5c
	api   *httptest.Server
	// IMDS is the PKI of the metadata services' attested documents: a
	// test root (trusted through trust_bundle_path), an intermediate and
	// the signing certificate of eastus.metadata.azure.com.
	IMDS *AzurePKI

	mu     sync.Mutex
	vms    []*AzureVM
	apps   map[string]azureApp // app ID -> app
	tokens map[string]string   // access tokens -> the subscription they may read ("*": any)
	calls  map[string]int
}

type azureApp struct {
	tenant, secret string
	assertion      string // a client assertion (JWT) instead of the secret
	subscriptions  []string
}

// Test tenant and subscription IDs.
const (
	AzureTenant       = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	AzureSubscription = "6b0e3a7c-1d2f-4e5a-9b8c-0d1e2f3a4b5c"
)

// AzureVM is a virtual machine of the fake cloud, with a system-assigned
// managed identity.
type AzureVM struct {
	Tenant, Subscription, ResourceGroup, Name string // defaults: AzureTenant, AzureSubscription, "rg-test"
	// PrincipalID is its identity's object ID (default: a new GUID).
	PrincipalID string
	// NSG, VNet and Subnet name its network interface's security group and
	// subnet ("" NSG: none), in its resource group.
	NSG, VNet, Subnet string
	// Deleted: Resource Manager no longer lists it.
	Deleted bool
	// Key and KeyID sign its tokens (nil: the cloud's).
	Key   *rsa.PrivateKey
	KeyID string
	// Issued shifts its tokens' iat, nbf and exp (they live 24 hours).
	Issued time.Duration
	// VMID is its vmId (default: a new GUID), Location its location
	// (default westeurope), Tags its tags, ScaleSet the name of its scale
	// set ("": a standalone VM; default instance ID "0").
	VMID, Location, ScaleSet, InstanceID string
	Tags                                 map[string]string

	imds *httptest.Server
	// IMDSRequests counts the requests its metadata service answered.
	IMDSRequests atomic.Int64
}

// NewAzure starts the fake Azure; its servers stop at the test's end.
func NewAzure(tb testing.TB) *Azure {
	tb.Helper()
	a := &Azure{
		tb: tb, Key: RSAKey(tb, "azure-ad", 2048), KeyID: "fake-azure-ad-key-1",
		apps: map[string]azureApp{}, tokens: map[string]string{}, calls: map[string]int{},
	}
	a.cert = selfSigned(tb, a.Key, "accounts.accesscontrol.windows.net")
	a.IMDS = NewAzurePKI(tb, "azure-imds", "eastus.metadata.azure.com")
	a.api = httptest.NewServer(http.HandlerFunc(a.serveAPI))
	tb.Cleanup(a.api.Close)
	return a
}

// URL is the fake's Azure AD and Resource Manager endpoint
// (login_endpoint, management_endpoint).
func (a *Azure) URL() string { return a.api.URL }

// Calls returns how many times the fake served an operation ("keys",
// "token", "resources", "virtualMachines", "networkInterfaces").
func (a *Azure) Calls(op string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls[op]
}

// AddApp registers an app of tenant with a client secret, allowed to read
// the subscriptions.
func (a *Azure) AddApp(tenant, appID, secret string, subscriptions ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.apps[appID] = azureApp{tenant: tenant, secret: secret, subscriptions: subscriptions}
}

// AddAppAssertion registers an app of tenant that authenticates with a
// client assertion (federated credential), allowed to read the
// subscriptions.
func (a *Azure) AddAppAssertion(tenant, appID, assertion string, subscriptions ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.apps[appID] = azureApp{tenant: tenant, assertion: assertion, subscriptions: subscriptions}
}

// ServerPluginData is the server's plugin_data for the fake: one tenant
// (AzureTenant) whose app (registered here) reads AzureSubscription, and
// the fake's endpoints.
func (a *Azure) ServerPluginData() map[string]any {
	a.AddApp(AzureTenant, "0a1b2c3d-0000-4000-8000-00000000a001", "test-app-secret", AzureSubscription)
	return map[string]any{
		"tenants": map[string]any{AzureTenant: map[string]any{
			"subscription_id": AzureSubscription, "app_id": "0a1b2c3d-0000-4000-8000-00000000a001", "app_secret": "test-app-secret",
		}},
		"login_endpoint":      a.URL(),
		"management_endpoint": a.URL(),
	}
}

func newGUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// AddVM adds a VM and starts its metadata service.
func (a *Azure) AddVM(vm *AzureVM) *AzureVM {
	if vm.Tenant == "" {
		vm.Tenant = AzureTenant
	}
	if vm.Subscription == "" {
		vm.Subscription = AzureSubscription
	}
	if vm.ResourceGroup == "" {
		vm.ResourceGroup = "rg-test"
	}
	if vm.PrincipalID == "" {
		vm.PrincipalID = newGUID()
	}
	if vm.VNet == "" {
		vm.VNet = "vnet-test"
	}
	if vm.Subnet == "" {
		vm.Subnet = "default"
	}
	if vm.Key == nil {
		vm.Key, vm.KeyID = a.Key, a.KeyID
	}
	if vm.VMID == "" {
		vm.VMID = newGUID()
	}
	if vm.Location == "" {
		vm.Location = "westeurope"
	}
	if vm.InstanceID == "" {
		vm.InstanceID = "0"
	}
	vm.imds = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { a.serveIMDS(vm, w, r) }))
	a.tb.Cleanup(vm.imds.Close)
	a.mu.Lock()
	a.vms = append(a.vms, vm)
	a.mu.Unlock()
	return vm
}

// IMDSURL is the VM's metadata service (metadata_endpoint).
func (vm *AzureVM) IMDSURL() string { return vm.imds.URL }

// ID is the VM's resource ID.
func (vm *AzureVM) ID() string {
	if vm.ScaleSet != "" {
		return vm.scaleSetID() + "/virtualMachines/" + vm.InstanceID
	}
	return "/subscriptions/" + vm.Subscription + "/resourceGroups/" + vm.ResourceGroup + "/providers/Microsoft.Compute/virtualMachines/" + vm.Name
}

// Token is the access token of the VM's managed identity for resource, as
// its metadata service issues it (Azure AD v1 claims).
func (a *Azure) Token(tb testing.TB, vm *AzureVM, resource string) string {
	tb.Helper()
	tok, err := vm.token(resource)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// token is Token for the metadata service's handler (no testing.TB
// outside the test's goroutine).
func (vm *AzureVM) token(resource string) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: vm.Key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", vm.KeyID).WithHeader("x5t", vm.KeyID))
	if err != nil {
		return "", err
	}
	iat := time.Now().Add(vm.Issued)
	iss := "https://sts.windows.net/" + vm.Tenant + "/"
	return jwt.Signed(signer).Claims(map[string]any{
		"aud": resource, "iss": iss, "idp": iss, "iat": iat.Unix(), "nbf": iat.Unix(), "exp": iat.Add(24 * time.Hour).Unix(),
		"aio": "E2ZgYJg", "appid": newGUID(), "appidacr": "2", "idtyp": "app", "oid": vm.PrincipalID, "sub": vm.PrincipalID,
		"tid": vm.Tenant, "uti": "x7Kq", "ver": "1.0", "xms_mirid": vm.ID(), "rh": "0.AX",
	}).Serialize()
}

// serveIMDS is a VM's metadata service: managed identity tokens and the
// instance's compute metadata.
func (a *Azure) serveIMDS(vm *AzureVM, w http.ResponseWriter, r *http.Request) {
	vm.IMDSRequests.Add(1)
	if r.Header.Get("Metadata") != "true" || r.Header.Get("X-Forwarded-For") != "" {
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "invalid_request", "error_description": "Required metadata header not specified"})
		return
	}
	if r.URL.Query().Get("api-version") == "" {
		http.Error(w, `{"error":"Bad request. api-version was not specified in the request"}`, http.StatusBadRequest)
		return
	}
	switch r.URL.Path {
	case "/metadata/identity/oauth2/token":
		res := r.URL.Query().Get("resource")
		if res == "" {
			w.WriteHeader(http.StatusBadRequest)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": "invalid_request", "error_description": "Required query variable 'resource' is missing"})
			return
		}
		tok, err := vm.token(res)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		a.mu.Lock()
		a.tokens[tok] = vm.Subscription
		a.mu.Unlock()
		now := time.Now()
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		_ = json.NewEncoder(w).Encode(map[string]string{
			"access_token": tok, "client_id": newGUID(), "expires_in": "86399", "expires_on": strconv.FormatInt(now.Add(24*time.Hour).Unix(), 10),
			"ext_expires_in": "86399", "not_before": strconv.FormatInt(now.Unix(), 10), "resource": res, "token_type": "Bearer",
		})
	case "/metadata/instance":
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		_ = json.NewEncoder(w).Encode(map[string]any{"compute": map[string]any{
			"name": vm.Name, "subscriptionId": vm.Subscription, "resourceGroupName": vm.ResourceGroup, "location": vm.Location, "vmScaleSetName": vm.ScaleSet,
			"vmId": vm.VMID,
		}})
	case "/metadata/attested/document":
		a.serveAttestedDocument(vm, w, r)
	default:
		http.NotFound(w, r)
	}
}

var (
	reARMResources = regexp.MustCompile(`^/subscriptions/([^/]+)/resources$`)
	reARMVM        = regexp.MustCompile(`^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.Compute/virtualMachines/([^/]+)$`)
	reARMNIC       = regexp.MustCompile(`^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.Network/networkInterfaces/([^/]+)$`)
	reARMToken     = regexp.MustCompile(`^/([^/]+)/oauth2/v2\.0/token$`)
	rePrincipal    = regexp.MustCompile(`identity/principalId eq '([^']*)'`)
)

func (a *Azure) count(op string) {
	a.mu.Lock()
	a.calls[op]++
	a.mu.Unlock()
}

func (a *Azure) serveAPI(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	switch {
	case p == "/common/.well-known/openid-configuration":
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer": "https://login.microsoftonline.com/{tenantid}/v2.0", "jwks_uri": a.URL() + "/common/discovery/v2.0/keys",
			"token_endpoint": a.URL() + "/common/oauth2/v2.0/token", "id_token_signing_alg_values_supported": []string{"RS256"},
		})
	case p == "/common/discovery/v2.0/keys":
		a.count("keys")
		cert := a.cert
		t := sha1.Sum(cert.Raw)
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": []map[string]any{{
			"kty": "RSA", "use": "sig", "kid": a.KeyID, "x5t": base64.RawURLEncoding.EncodeToString(t[:]),
			"n": base64.RawURLEncoding.EncodeToString(a.Key.N.Bytes()), "e": "AQAB",
			"x5c": []string{base64.StdEncoding.EncodeToString(cert.Raw)}, "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0",
		}}})
	case reARMToken.MatchString(p):
		a.count("token")
		a.serveAppToken(w, r, reARMToken.FindStringSubmatch(p)[1])
	case reOpenIDConfig.MatchString(p):
		a.serveTenantConfig(w, reOpenIDConfig.FindStringSubmatch(p)[1])
	case strings.HasPrefix(p, "/subscriptions/"):
		a.serveARM(w, r)
	default:
		http.NotFound(w, r)
	}
}

// serveAppToken is Azure AD's client credentials grant.
func (a *Azure) serveAppToken(w http.ResponseWriter, r *http.Request, tenant string) {
	fail := func(status int, code, desc string) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]any{"error": code, "error_description": desc, "error_codes": []int{7000215}})
	}
	if r.Method != http.MethodPost || r.ParseForm() != nil || r.PostForm.Get("grant_type") != "client_credentials" {
		fail(http.StatusBadRequest, "invalid_request", "AADSTS900144: The request body must contain the following parameter: 'grant_type'.")
		return
	}
	a.mu.Lock()
	app, ok := a.apps[r.PostForm.Get("client_id")]
	a.mu.Unlock()
	if !ok || app.tenant != tenant {
		fail(http.StatusBadRequest, "unauthorized_client", "AADSTS700016: Application not found in the directory.")
		return
	}
	if as := r.PostForm.Get("client_assertion"); as != "" || app.assertion != "" {
		if r.PostForm.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" || as != app.assertion {
			fail(http.StatusUnauthorized, "invalid_client", "AADSTS700021: Client assertion application identifier doesn't match 'client_id' parameter.")
			return
		}
	} else if r.PostForm.Get("client_secret") != app.secret {
		fail(http.StatusUnauthorized, "invalid_client", "AADSTS7000215: Invalid client secret provided.")
		return
	}
	if !strings.HasSuffix(r.PostForm.Get("scope"), "/.default") {
		fail(http.StatusBadRequest, "invalid_scope", "AADSTS1002012: The provided value for scope is not valid.")
		return
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	tok := "eyJ0eXAiOiJKV1QifQ.fake-app-token." + base64.RawURLEncoding.EncodeToString(b)
	a.mu.Lock()
	a.tokens[tok] = strings.Join(app.subscriptions, ",")
	a.mu.Unlock()
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_ = json.NewEncoder(w).Encode(map[string]any{"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": tok})
}

func armError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

// serveARM is Resource Manager: the bearer token must read the
// subscription.
func (a *Azure) serveARM(w http.ResponseWriter, r *http.Request) {
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	a.mu.Lock()
	subs, ok := a.tokens[tok]
	a.mu.Unlock()
	if !ok {
		armError(w, http.StatusUnauthorized, "InvalidAuthenticationToken", "The access token is invalid.")
		return
	}
	if r.URL.Query().Get("api-version") == "" {
		armError(w, http.StatusBadRequest, "MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required for all requests.")
		return
	}
	sub := strings.Split(r.URL.Path, "/")[2]
	if !strings.Contains(","+subs+",", ","+sub+",") {
		armError(w, http.StatusForbidden, "AuthorizationFailed", "The client does not have authorization to perform action over scope '/subscriptions/"+sub+"'.")
		return
	}
	a.mu.Lock()
	vms := append([]*AzureVM(nil), a.vms...)
	a.mu.Unlock()
	live := func(match func(*AzureVM) bool) *AzureVM {
		for _, vm := range vms {
			if !vm.Deleted && vm.Subscription == sub && match(vm) {
				return vm
			}
		}
		return nil
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	p := r.URL.Path
	switch {
	case reARMResources.MatchString(p):
		a.count("resources")
		m := rePrincipal.FindStringSubmatch(r.URL.Query().Get("$filter"))
		if m == nil || !strings.Contains(r.URL.Query().Get("$filter"), "resourceType eq 'Microsoft.Compute/virtualMachines'") {
			armError(w, http.StatusBadRequest, "InvalidFilterInQueryString", "Invalid $filter.")
			return
		}
		value := []map[string]any{}
		if vm := live(func(vm *AzureVM) bool { return vm.PrincipalID == m[1] }); vm != nil {
			value = append(value, map[string]any{
				"id": vm.ID(), "name": vm.Name, "type": "Microsoft.Compute/virtualMachines", "location": "westeurope",
				"identity": map[string]string{"principalId": vm.PrincipalID, "tenantId": vm.Tenant, "type": "SystemAssigned"},
			})
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"value": value})
	case a.serveARMList(w, r, sub, live):
	case reARMVM.MatchString(p):
		a.count("virtualMachines")
		m := reARMVM.FindStringSubmatch(p)
		vm := live(func(vm *AzureVM) bool { return vm.ScaleSet == "" && vm.ResourceGroup == m[2] && vm.Name == m[3] })
		if vm == nil {
			armError(w, http.StatusNotFound, "ResourceNotFound", fmt.Sprintf("The Resource 'Microsoft.Compute/virtualMachines/%s' under resource group '%s' was not found.", m[3], m[2]))
			return
		}
		nic := "/subscriptions/" + vm.Subscription + "/resourceGroups/" + vm.ResourceGroup + "/providers/Microsoft.Network/networkInterfaces/" + vm.Name + "-nic"
		_ = json.NewEncoder(w).Encode(map[string]any{
			"id": vm.ID(), "name": vm.Name, "type": "Microsoft.Compute/virtualMachines", "location": "westeurope",
			"identity":   map[string]string{"principalId": vm.PrincipalID, "tenantId": vm.Tenant, "type": "SystemAssigned"},
			"properties": map[string]any{"vmId": newGUID(), "networkProfile": map[string]any{"networkInterfaces": []map[string]any{{"id": nic, "properties": map[string]bool{"primary": true}}}}},
		})
	case reARMNIC.MatchString(p):
		a.count("networkInterfaces")
		m := reARMNIC.FindStringSubmatch(p)
		vm := live(func(vm *AzureVM) bool { return vm.ScaleSet == "" && vm.ResourceGroup == m[2] && vm.Name+"-nic" == m[3] })
		if vm == nil {
			armError(w, http.StatusNotFound, "ResourceNotFound", "The Resource 'Microsoft.Network/networkInterfaces/"+m[3]+"' was not found.")
			return
		}
		_ = json.NewEncoder(w).Encode(vm.nic())
	default:
		armError(w, http.StatusNotFound, "InvalidResourceType", "The resource type could not be found.")
	}
}

// nic is the VM's network interface, as Resource Manager gives it.
func (vm *AzureVM) nic() map[string]any {
	rg := "/subscriptions/" + vm.Subscription + "/resourceGroups/" + vm.ResourceGroup
	{
		props := map[string]any{"ipConfigurations": []map[string]any{{"name": "ipconfig1", "properties": map[string]any{
			"privateIPAddress": "10.0.0.4", "subnet": map[string]string{"id": rg + "/providers/Microsoft.Network/virtualNetworks/" + vm.VNet + "/subnets/" + vm.Subnet},
		}}}}
		if vm.NSG != "" {
			props["networkSecurityGroup"] = map[string]string{"id": rg + "/providers/Microsoft.Network/networkSecurityGroups/" + vm.NSG}
		}
		return map[string]any{"id": vm.nicID(), "name": vm.Name + "-nic", "properties": props}
	}
}
