package cloudfake

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// GCP is a fake Google Cloud: instances with their metadata servers, and
// one endpoint for Google's OAuth 2.0 certificates (/oauth2/v1/certs: key
// ID -> PEM certificate; /oauth2/v3/certs: JWKS), its OAuth token endpoint
// (/token: the JWT bearer grant of a service account key) and the Compute
// Engine API (/compute/v1/projects/{p}/zones/{z}/instances/{name}).
type GCP struct {
	tb testing.TB
	// Key signs identity tokens, under KeyID.
	Key   *rsa.PrivateKey
	KeyID string
	cert  *x509.Certificate // Key's certificate, as Google publishes it
	api   *httptest.Server

	// SAKey is the server's service account key (ServiceAccountFile).
	SAKey   *rsa.PrivateKey
	SAEmail string

	mu        sync.Mutex
	instances []*GCPInstance
	tokens    map[string]bool // access tokens issued
	calls     map[string]int
	// CertsMaxAge is the Cache-Control max-age of the certificate
	// endpoints (0: 3600 s... as Google's, roughly).
	CertsMaxAge int
}

// GCPInstance is a Compute Engine instance of the fake cloud.
type GCPInstance struct {
	Project       string // default "sigil-test-project"
	ProjectNumber int64
	Zone          string // default us-central1-a
	Name, ID      string
	// ServiceAccount is the email of its service account (default
	// <project number>-compute@developer.gserviceaccount.com).
	ServiceAccount string
	Tags           []string
	Labels         map[string]string
	Metadata       map[string]string
	// Deleted: the Compute API no longer lists it.
	Deleted bool
	// Key and KeyID sign its tokens (nil: the cloud's).
	Key   *rsa.PrivateKey
	KeyID string
	// TokenTTL is its tokens' lifetime (0: one hour); Issued shifts their
	// iat (and so exp).
	TokenTTL time.Duration
	Issued   time.Duration

	md *httptest.Server
	// MetadataRequests counts the requests its metadata server answered.
	MetadataRequests atomic.Int64
}

// NewGCP starts the fake Google Cloud; its servers stop at the test's end.
func NewGCP(tb testing.TB) *GCP {
	tb.Helper()
	g := &GCP{
		tb: tb, Key: RSAKey(tb, "gcp-google", 2048), KeyID: "fake-google-key-1",
		SAKey: RSAKey(tb, "gcp-sa", 2048), SAEmail: "sigil-server@sigil-test-project.iam.gserviceaccount.com",
		tokens: map[string]bool{}, calls: map[string]int{},
	}
	g.cert = selfSigned(tb, g.Key, "fake-google-key-1.accounts.google.com")
	g.api = httptest.NewServer(http.HandlerFunc(g.serveAPI))
	tb.Cleanup(g.api.Close)
	return g
}

// URL is the fake's API base URL.
func (g *GCP) URL() string { return g.api.URL }

// CertsURL is Google's v1 certificate endpoint of the fake
// (certificates_url).
func (g *GCP) CertsURL() string { return g.api.URL + "/oauth2/v1/certs" }

// JWKSURL is the JWKS form of the same keys.
func (g *GCP) JWKSURL() string { return g.api.URL + "/oauth2/v3/certs" }

// ComputeURL is the Compute API endpoint (compute_endpoint).
func (g *GCP) ComputeURL() string { return g.api.URL + "/compute/v1/" }

// Calls returns how many times the fake served an operation ("certs",
// "token", "instances.get").
func (g *GCP) Calls(op string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.calls[op]
}

// WriteServiceAccountFile writes the server's service account key file,
// whose token_uri is the fake's, and returns its path.
func (g *GCP) WriteServiceAccountFile(tb testing.TB, dir string) string {
	tb.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(g.SAKey)
	if err != nil {
		tb.Fatal(err)
	}
	b, _ := json.MarshalIndent(map[string]string{
		"type": "service_account", "project_id": "sigil-test-project", "private_key_id": "sa-key-1",
		"private_key":  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email": g.SAEmail, "client_id": "100000000000000000001",
		"auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": g.api.URL + "/token",
	}, "", "  ")
	path := filepath.Join(dir, "gcp-service-account.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

// ServerPluginData is the server's plugin_data for the fake: the allowed
// projects, its certificate and Compute endpoints and, with
// use_instance_metadata, the service account file (written into dir).
func (g *GCP) ServerPluginData(tb testing.TB, dir string, projects ...string) map[string]any {
	if len(projects) == 0 {
		projects = []string{"sigil-test-project"}
	}
	return map[string]any{
		"projectid_allow_list": projects,
		"certificates_url":     g.CertsURL(),
		"compute_endpoint":     g.ComputeURL(),
		"service_account_file": g.WriteServiceAccountFile(tb, dir),
	}
}

// AddInstance adds an instance and starts its metadata server.
func (g *GCP) AddInstance(i *GCPInstance) *GCPInstance {
	if i.Project == "" {
		i.Project = "sigil-test-project"
	}
	if i.ProjectNumber == 0 {
		i.ProjectNumber = 123456789012
	}
	if i.Zone == "" {
		i.Zone = "us-central1-a"
	}
	if i.ServiceAccount == "" {
		i.ServiceAccount = fmt.Sprintf("%d-compute@developer.gserviceaccount.com", i.ProjectNumber)
	}
	if i.Key == nil {
		i.Key, i.KeyID = g.Key, g.KeyID
	}
	i.md = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { g.serveMetadata(i, w, r) }))
	g.tb.Cleanup(i.md.Close)
	g.mu.Lock()
	g.instances = append(g.instances, i)
	g.mu.Unlock()
	return i
}

// MetadataHost is the instance's metadata server as host:port
// (identity_token_host).
func (i *GCPInstance) MetadataHost() string { return strings.TrimPrefix(i.md.URL, "http://") }

// IdentityToken is the token the metadata server gives for audience
// (format=full), signed with the instance's key.
func (i *GCPInstance) IdentityToken(tb testing.TB, audience string) string {
	tb.Helper()
	tok, err := i.identityToken(audience)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// identityToken is IdentityToken for the metadata server's handler (no
// testing.TB outside the test's goroutine).
func (i *GCPInstance) identityToken(audience string) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: i.Key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", i.KeyID))
	if err != nil {
		return "", err
	}
	ttl := i.TokenTTL
	if ttl == 0 {
		ttl = time.Hour
	}
	iat := time.Now().Add(i.Issued)
	claims := map[string]any{
		"iss": "https://accounts.google.com", "aud": audience, "azp": "10" + i.ID,
		"sub": "10" + i.ID, "email": i.ServiceAccount, "email_verified": true,
		"iat": iat.Unix(), "exp": iat.Add(ttl).Unix(),
		"google": map[string]any{"compute_engine": map[string]any{
			"instance_creation_timestamp": 1735787045, "instance_id": i.ID, "instance_name": i.Name,
			"project_id": i.Project, "project_number": i.ProjectNumber, "zone": i.Zone,
		}},
	}
	return jwt.Signed(signer).Claims(claims).Serialize()
}

var reIdentityPath = regexp.MustCompile(`^/computeMetadata/v1/instance/service-accounts/([^/]+)/identity$`)

// serveMetadata is an instance's metadata server: identity tokens only.
func (g *GCP) serveMetadata(i *GCPInstance, w http.ResponseWriter, r *http.Request) {
	i.MetadataRequests.Add(1)
	if r.Header.Get("Metadata-Flavor") != "Google" {
		http.Error(w, "Missing Metadata-Flavor:Google header.", http.StatusForbidden)
		return
	}
	w.Header().Set("Metadata-Flavor", "Google")
	m := reIdentityPath.FindStringSubmatch(r.URL.Path)
	if m == nil || r.Method != http.MethodGet {
		http.NotFound(w, r)
		return
	}
	if m[1] != "default" && m[1] != i.ServiceAccount {
		http.NotFound(w, r)
		return
	}
	aud := r.URL.Query().Get("audience")
	if aud == "" {
		http.Error(w, "non-empty audience parameter required", http.StatusBadRequest)
		return
	}
	tok, err := i.identityToken(aud)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if r.URL.Query().Get("format") != "full" {
		// format=standard: no google claim (the fake re-signs without it).
		tok = g.standardToken(i, aud)
	}
	w.Header().Set("Content-Type", "text/html")
	_, _ = w.Write([]byte(tok))
}

func (g *GCP) standardToken(i *GCPInstance, aud string) string {
	signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: i.Key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", i.KeyID))
	now := time.Now()
	tok, _ := jwt.Signed(signer).Claims(map[string]any{
		"iss": "https://accounts.google.com", "aud": aud, "sub": "10" + i.ID, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}).Serialize()
	return tok
}

var reInstancePath = regexp.MustCompile(`^/compute/v1/projects/([^/]+)/zones/([^/]+)/instances/([^/]+)$`)

func (g *GCP) serveAPI(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/oauth2/v1/certs" || r.URL.Path == "/oauth2/v3/certs":
		g.count("certs")
		g.serveCerts(w, r.URL.Path == "/oauth2/v3/certs")
	case r.URL.Path == "/token":
		g.count("token")
		g.serveToken(w, r)
	case reInstancePath.MatchString(r.URL.Path):
		g.count("instances.get")
		g.serveInstance(w, r)
	default:
		googleError(w, http.StatusNotFound, "notFound", "no such API: "+r.URL.Path)
	}
}

func (g *GCP) count(op string) {
	g.mu.Lock()
	g.calls[op]++
	g.mu.Unlock()
}

// serveCerts serves the keys of the cloud (and of instances with their
// own key registered as Google's: none; a forger's key is not served).
func (g *GCP) serveCerts(w http.ResponseWriter, jwks bool) {
	maxAge := g.CertsMaxAge
	if maxAge == 0 {
		maxAge = 3600
	}
	w.Header().Set("Cache-Control", fmt.Sprintf("public, max-age=%d, must-revalidate, no-transform", maxAge))
	w.Header().Set("Expires", time.Now().Add(time.Duration(maxAge)*time.Second).UTC().Format(http.TimeFormat))
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	if jwks {
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &g.Key.PublicKey, KeyID: g.KeyID, Algorithm: "RS256", Use: "sig"}}})
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]string{g.KeyID: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: g.cert.Raw}))})
}

// serveToken is the OAuth 2.0 token endpoint for the JWT bearer grant
// (RFC 7523) of a service account key.
func (g *GCP) serveToken(w http.ResponseWriter, r *http.Request) {
	oauthErr := func(code, desc string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
	}
	if r.Method != http.MethodPost || r.ParseForm() != nil {
		oauthErr("invalid_request", "POST a form")
		return
	}
	if r.PostForm.Get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
		oauthErr("unsupported_grant_type", "Invalid grant_type")
		return
	}
	tok, err := jwt.ParseSigned(r.PostForm.Get("assertion"), []jose.SignatureAlgorithm{jose.RS256})
	var c struct {
		jwt.Claims
		Scope string `json:"scope"`
	}
	if err != nil || tok.Claims(&g.SAKey.PublicKey, &c) != nil {
		oauthErr("invalid_grant", "Invalid JWT Signature.")
		return
	}
	if c.Issuer != g.SAEmail || !c.Audience.Contains(g.api.URL+"/token") || c.ValidateWithLeeway(jwt.Expected{Time: time.Now()}, time.Minute) != nil {
		oauthErr("invalid_grant", "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe.")
		return
	}
	if !strings.Contains(c.Scope, "https://www.googleapis.com/auth/compute") {
		oauthErr("invalid_scope", "no compute scope")
		return
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	access := "ya29.fake-" + base64.RawURLEncoding.EncodeToString(b)
	g.mu.Lock()
	g.tokens[access] = true
	g.mu.Unlock()
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_ = json.NewEncoder(w).Encode(map[string]any{"access_token": access, "expires_in": 3599, "token_type": "Bearer"})
}

func (g *GCP) serveInstance(w http.ResponseWriter, r *http.Request) {
	access, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	g.mu.Lock()
	ok := g.tokens[access]
	g.mu.Unlock()
	if !ok {
		googleError(w, http.StatusUnauthorized, "authError", "Request had invalid authentication credentials.")
		return
	}
	m := reInstancePath.FindStringSubmatch(r.URL.Path)
	g.mu.Lock()
	var inst *GCPInstance
	for _, i := range g.instances {
		if i.Project == m[1] && i.Zone == m[2] && i.Name == m[3] && !i.Deleted {
			inst = i
		}
	}
	g.mu.Unlock()
	if inst == nil {
		googleError(w, http.StatusNotFound, "notFound", fmt.Sprintf("The resource 'projects/%s/zones/%s/instances/%s' was not found", m[1], m[2], m[3]))
		return
	}
	var items []map[string]string
	for _, k := range sortedKeys(inst.Metadata) {
		items = append(items, map[string]string{"key": k, "value": inst.Metadata[k]})
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"kind": "compute#instance", "id": inst.ID, "name": inst.Name, "status": "RUNNING",
		"zone":            "https://www.googleapis.com/compute/v1/projects/" + inst.Project + "/zones/" + inst.Zone,
		"machineType":     "https://www.googleapis.com/compute/v1/projects/" + inst.Project + "/zones/" + inst.Zone + "/machineTypes/e2-small",
		"tags":            map[string]any{"items": inst.Tags, "fingerprint": "42WmSpB8rSM="},
		"labels":          inst.Labels,
		"metadata":        map[string]any{"kind": "compute#metadata", "fingerprint": "mBvB4ZyuXbE=", "items": items},
		"serviceAccounts": []map[string]any{{"email": inst.ServiceAccount, "scopes": []string{"https://www.googleapis.com/auth/cloud-platform"}}},
	})
}

// googleError writes a Google API error answer.
func googleError(w http.ResponseWriter, status int, reason, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{
		"code": status, "message": msg, "errors": []map[string]string{{"message": msg, "domain": "global", "reason": reason}},
	}})
}
