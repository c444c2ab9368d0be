package gcpiit_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/attest/node/agentpath"
	"github.com/sigil-spiffe/sigil/internal/attest/node/gcpiit"
	"github.com/sigil-spiffe/sigil/internal/attest/node/gcpiit/computeapi"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil/cloudfake"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func parseTemplate(text string) (gcpiit.PathTemplate, error) { return agentpath.Parse(text) }

// fakeConfig is a server configuration for the fake (its certificates,
// Compute endpoint and service account file), parsed from plugin_data as
// a configuration file would be.
func fakeConfig(t *testing.T, g *cloudfake.GCP, extra map[string]any) gcpiit.ServerConfig {
	t.Helper()
	data := g.ServerPluginData(t, t.TempDir())
	for k, v := range extra {
		data[k] = v
	}
	c, err := gcpiit.ParseServerConfig(config.NewPlugin("NodeAttestor", gcpiit.Type, data).Data(), parseTemplate, computeapi.CheckCredentials)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newServer builds the server half with the real Compute API client
// against the fake; now, when set, is its clock.
func newServer(t *testing.T, cfg gcpiit.ServerConfig, now func() time.Time) *gcpiit.Server {
	t.Helper()
	api, err := computeapi.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s, err := gcpiit.NewServer(cfg, gcpiit.ServerOptions{TrustDomain: td, ParseTemplate: parseTemplate, Compute: api, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// payload runs the agent half against an instance's metadata server.
func payload(t *testing.T, inst *cloudfake.GCPInstance, cfg gcpiit.AgentConfig) []byte {
	t.Helper()
	cfg.IdentityTokenHost = inst.MetadataHost()
	a, err := gcpiit.NewAgent(cfg)
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

func attest(s *gcpiit.Server, p []byte) (*node.Result, error) {
	return s.Attest(context.Background(), p, func(context.Context, []byte) ([]byte, error) {
		return nil, errors.New("gcp_iit sent a challenge")
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

// TestAttest: an instance attests with the token its metadata server
// signs; the agent ID and selectors are SPIRE's, from the token alone, or
// with use_instance_metadata also from the Compute API (allowed label and
// metadata keys only), which the server reaches with an OAuth token of its
// service account key.
func TestAttest(t *testing.T) {
	g := cloudfake.NewGCP(t)
	inst := g.AddInstance(&cloudfake.GCPInstance{
		Name: "web-1", ID: "4071232845720010001", Tags: []string{"http-server", "web"},
		Labels: map[string]string{"env": "prod", "team": "a"}, Metadata: map[string]string{"role": "frontend", "startup-script": "#!/bin/sh"},
	})
	res, err := attest(newServer(t, fakeConfig(t, g, nil), nil), payload(t, inst, gcpiit.AgentConfig{}))
	if err != nil {
		t.Fatal(err)
	}
	if res.AgentID.String() != "spiffe://example.org/spire/agent/gcp_iit/sigil-test-project/4071232845720010001" || res.CanReattest {
		t.Fatalf("agent ID %s, can re-attest %v", res.AgentID, res.CanReattest)
	}
	want := []string{"gcp_iit:instance-name:web-1", "gcp_iit:project-id:sigil-test-project", "gcp_iit:sa:123456789012-compute@developer.gserviceaccount.com", "gcp_iit:zone:us-central1-a"}
	if got := values(res); !slices.Equal(got, want) {
		t.Fatalf("selectors\n got %q\nwant %q", got, want)
	}
	if g.Calls("instances.get") != 0 {
		t.Fatal("the Compute API was asked without use_instance_metadata")
	}

	s := newServer(t, fakeConfig(t, g, map[string]any{
		"use_instance_metadata": true, "allowed_label_keys": []string{"env"}, "allowed_metadata_keys": []string{"role"},
		"agent_path_template": "/gcp/{{ .ProjectID }}/{{ .Zone }}/{{ .InstanceName }}/{{ .ServiceAccount }}",
	}), nil)
	res, err = attest(s, payload(t, inst, gcpiit.AgentConfig{}))
	if err != nil {
		t.Fatal(err)
	}
	if res.AgentID.String() != "spiffe://example.org/spire/agent/gcp/sigil-test-project/us-central1-a/web-1/123456789012-compute_developer.gserviceaccount.com" {
		t.Fatalf("agent ID %s", res.AgentID)
	}
	want = append(want, "gcp_iit:label:env:prod", "gcp_iit:metadata:role:frontend", "gcp_iit:tag:http-server", "gcp_iit:tag:web")
	slices.Sort(want)
	if got := values(res); !slices.Equal(got, want) {
		t.Fatalf("selectors with use_instance_metadata\n got %q\nwant %q", got, want)
	}
	if g.Calls("token") != 1 || g.Calls("instances.get") != 1 {
		t.Fatalf("%d token and %d instances.get calls", g.Calls("token"), g.Calls("instances.get"))
	}
	// The keys are cached as the endpoint's max-age says, the OAuth token
	// as its expires_in says.
	if _, err := attest(s, payload(t, inst, gcpiit.AgentConfig{})); err != nil {
		t.Fatal(err)
	}
	if g.Calls("certs") != 2 || g.Calls("token") != 1 {
		t.Fatalf("%d certificate fetches for two servers, %d token requests", g.Calls("certs"), g.Calls("token"))
	}

	// The JWKS form of Google's keys works as well, and the audience is
	// configurable on both sides (Sigil extension).
	s = newServer(t, fakeConfig(t, g, map[string]any{"certificates_url": g.JWKSURL(), "audience": "sigil-test"}), nil)
	if _, err := attest(s, payload(t, inst, gcpiit.AgentConfig{Audience: "sigil-test", ServiceAccount: inst.ServiceAccount})); err != nil {
		t.Fatal(err)
	}
}

// signWith signs claims with a key under kid, as a forger or Google would.
func signWith(t *testing.T, key any, kid string, claims map[string]any) []byte {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return []byte(tok)
}

// TestRefusals: forged and foreign tokens, wrong audiences, other
// projects, expired tokens, tokens without the instance claims, deleted
// instances: each refused with its own error.
func TestRefusals(t *testing.T) {
	g := cloudfake.NewGCP(t)
	good := g.AddInstance(&cloudfake.GCPInstance{Name: "good", ID: "1001", Metadata: map[string]string{"big": strings.Repeat("x", 129)}})
	forger := g.AddInstance(&cloudfake.GCPInstance{Name: "forger", ID: "1002", Key: cloudfake.RSAKey(t, "gcp-forger", 2048), KeyID: "forged-key"})
	// A forger's key under Google's key ID.
	impostor := g.AddInstance(&cloudfake.GCPInstance{Name: "impostor", ID: "1003", Key: cloudfake.RSAKey(t, "gcp-forger", 2048), KeyID: g.KeyID})
	other := g.AddInstance(&cloudfake.GCPInstance{Name: "other", ID: "1004", Project: "other-project"})
	expired := g.AddInstance(&cloudfake.GCPInstance{Name: "expired", ID: "1005", Issued: -2 * time.Hour})
	future := g.AddInstance(&cloudfake.GCPInstance{Name: "future", ID: "1006", Issued: 10 * time.Minute})
	deleted := g.AddInstance(&cloudfake.GCPInstance{Name: "deleted", ID: "1007", Deleted: true})

	s := newServer(t, fakeConfig(t, g, nil), nil)
	meta := newServer(t, fakeConfig(t, g, map[string]any{"use_instance_metadata": true, "allowed_metadata_keys": []string{"big"}}), nil)
	claims := func(iss, aud string) map[string]any {
		now := time.Now()
		return map[string]any{"iss": iss, "aud": aud, "email": "x@y", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
			"google": map[string]any{"compute_engine": map[string]any{"project_id": "sigil-test-project", "zone": "us-central1-a", "instance_id": "1", "instance_name": "n"}}}
	}
	badName := claims("https://accounts.google.com", gcpiit.DefaultAudience)
	badName["google"].(map[string]any)["compute_engine"].(map[string]any)["instance_name"] = "../x"

	for _, tc := range []struct {
		name    string
		s       *gcpiit.Server
		payload []byte
		is      error
		want    string
	}{
		{"signed with an unknown key", s, payload(t, forger, gcpiit.AgentConfig{}), gcpiit.ErrBadSignature, `signed with unknown key "forged-key", not one of Google's keys`},
		{"signed with another key under Google's key ID", s, payload(t, impostor, gcpiit.AgentConfig{}), gcpiit.ErrBadSignature, `does not verify with Google's key "fake-google-key-1"`},
		{"another audience", s, payload(t, good, gcpiit.AgentConfig{Audience: "https://other.example"}), gcpiit.ErrBadClaims, `audience "https://other.example", not "spire-gcp-node-attestor"`},
		{"another project", s, payload(t, other, gcpiit.AgentConfig{}), gcpiit.ErrProjectNotAllowed, "project other-project of instance 1004 is not in projectid_allow_list"},
		{"expired", s, payload(t, expired, gcpiit.AgentConfig{}), gcpiit.ErrBadClaims, "token is expired"},
		{"issued in the future", s, payload(t, future, gcpiit.AgentConfig{}), gcpiit.ErrBadClaims, "issued in the future"},
		{"another issuer", s, signWith(t, g.Key, g.KeyID, claims("https://evil.example", gcpiit.DefaultAudience)), gcpiit.ErrBadClaims, `issuer "https://evil.example" is not Google's`},
		{"no compute_engine claim", s, signWith(t, g.Key, g.KeyID, map[string]any{"iss": "accounts.google.com", "aud": gcpiit.DefaultAudience, "exp": time.Now().Add(time.Hour).Unix()}), node.ErrInvalid, "no google.compute_engine claim (the agent must request format=full)"},
		{"invalid instance name", s, signWith(t, g.Key, g.KeyID, badName), node.ErrInvalid, `instance_name "../x" is not valid`},
		{"HS256", s, []byte("eyJhbGciOiJIUzI1NiJ9.e30.ZRrHA1JJJW8opsbCGfG_HACGpVUMN_a9IV7pAx_Zmeo"), node.ErrInvalid, "not an RS256 JWT"},
		{"not a JWT", s, []byte("hello"), node.ErrInvalid, "not an RS256 JWT"},
		{"oversized", s, make([]byte, gcpiit.MaxTokenSize+1), node.ErrInvalid, "more than 16384"},
		{"deleted instance", meta, payload(t, deleted, gcpiit.AgentConfig{}), gcpiit.ErrNoSuchInstance, `instance deleted (1007) of project sigil-test-project: attestation refused: no such instance: Compute API instances.get: 404 "The resource 'projects/sigil-test-project`},
		{"metadata value too large", meta, payload(t, good, gcpiit.AgentConfig{}), gcpiit.ErrUnusableInstance, `metadata "big" of instance 1001 is 129 bytes, more than max_metadata_value_size 128`},
	} {
		_, err := attest(tc.s, tc.payload)
		t.Logf("%s: %v", tc.name, err)
		if !errors.Is(err, tc.is) || err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %v containing %q", tc.name, err, tc.is, tc.want)
		}
	}
	// An unknown key ID made the server fetch the keys again, but not more
	// than once per 30 seconds however many forged tokens arrive.
	before := g.Calls("certs")
	for range 3 {
		if _, err := attest(s, payload(t, forger, gcpiit.AgentConfig{})); !errors.Is(err, gcpiit.ErrBadSignature) {
			t.Fatal(err)
		}
	}
	if n := g.Calls("certs") - before; n != 0 {
		t.Errorf("%d certificate fetches for 3 forged key IDs within 30 s", n)
	}
	// A Compute API that refuses the server's credentials is the
	// server's failure, not a refusal.
	cfg := fakeConfig(t, g, map[string]any{"use_instance_metadata": true})
	cfg.ComputeEndpoint = g.URL() + "/nowhere/"
	if _, err := attest(newServer(t, cfg, nil), payload(t, good, gcpiit.AgentConfig{})); err == nil || errors.Is(err, node.ErrRefused) || errors.Is(err, node.ErrInvalid) {
		t.Errorf("a failing Compute API: %v", err)
	}
}

// TestKeyRefresh: Google's keys are fetched again when they expire (the
// clock past max-age), a new key ID is fetched at once, and the last keys
// stay in use while the endpoint is down.
func TestKeyRefresh(t *testing.T) {
	g := cloudfake.NewGCP(t)
	g.CertsMaxAge = 60
	inst := g.AddInstance(&cloudfake.GCPInstance{Name: "a", ID: "1"})
	var down atomic.Bool
	var fetches atomic.Int64
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		if down.Load() {
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
			return
		}
		resp, err := http.Get(g.CertsURL())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		buf := make([]byte, 1<<16)
		n, _ := resp.Body.Read(buf)
		_, _ = w.Write(buf[:n])
	}))
	defer proxy.Close()
	now := time.Now()
	clock := func() time.Time { return now }
	s := newServer(t, fakeConfig(t, g, map[string]any{"certificates_url": proxy.URL}), clock)
	p := payload(t, inst, gcpiit.AgentConfig{})
	if _, err := attest(s, p); err != nil {
		t.Fatal(err)
	}
	now = now.Add(30 * time.Second)
	if _, err := attest(s, p); err != nil || fetches.Load() != 1 {
		t.Fatalf("within max-age: %v, %d fetches", err, fetches.Load())
	}
	now = now.Add(31 * time.Second)
	if _, err := attest(s, p); err != nil || fetches.Load() != 2 {
		t.Fatalf("past max-age: %v, %d fetches", err, fetches.Load())
	}
	down.Store(true)
	now = now.Add(2 * time.Minute)
	if _, err := attest(s, p); err != nil || fetches.Load() != 3 {
		t.Fatalf("endpoint down, keys expired: %v, %d fetches (the last keys stay in use)", err, fetches.Load())
	}
	// A server that never got the keys fails (not a refusal).
	s = newServer(t, fakeConfig(t, g, map[string]any{"certificates_url": proxy.URL}), clock)
	if _, err := attest(s, p); err == nil || errors.Is(err, node.ErrRefused) || !strings.Contains(err.Error(), "503") {
		t.Fatalf("no keys: %v", err)
	}
}

// TestAgent: the agent asks the metadata server with Metadata-Flavor:
// Google for a format=full token of its service account, and reports the
// server's errors.
func TestAgent(t *testing.T) {
	var got *http.Request
	md := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r
		if strings.Contains(r.URL.Path, "/missing@x/") {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte("a.b.c\n"))
	}))
	defer md.Close()
	host := strings.TrimPrefix(md.URL, "http://")
	a, err := gcpiit.NewAgent(gcpiit.AgentConfig{IdentityTokenHost: host})
	if err != nil {
		t.Fatal(err)
	}
	s, err := a.Begin(context.Background())
	if err != nil || string(s.Payload()) != "a.b.c" {
		t.Fatalf("%v", err)
	}
	if got.Header.Get("Metadata-Flavor") != "Google" || got.URL.Path != "/computeMetadata/v1/instance/service-accounts/default/identity" ||
		got.URL.Query().Get("audience") != "spire-gcp-node-attestor" || got.URL.Query().Get("format") != "full" {
		t.Fatalf("request %s %v", got.URL, got.Header)
	}
	a, _ = gcpiit.NewAgent(gcpiit.AgentConfig{IdentityTokenHost: host, ServiceAccount: "missing@x"})
	if _, err := a.Begin(context.Background()); err == nil || !strings.Contains(err.Error(), "404 Not Found") {
		t.Fatalf("missing service account: %v", err)
	}
	if _, err := gcpiit.NewAgent(gcpiit.AgentConfig{IdentityTokenHost: "http://x/"}); err == nil {
		t.Fatal("a URL as identity_token_host accepted")
	}
}

func TestParseConfig(t *testing.T) {
	g := cloudfake.NewGCP(t)
	parse := func(data map[string]any) (gcpiit.ServerConfig, error) {
		return gcpiit.ParseServerConfig(config.NewPlugin("NodeAttestor", gcpiit.Type, data).Data(), parseTemplate, computeapi.CheckCredentials)
	}
	sa := g.WriteServiceAccountFile(t, t.TempDir())
	c, err := parse(map[string]any{
		"projectid_allow_list": []string{"p-12345", "example.com:proj-1"}, "use_instance_metadata": true,
		"allowed_label_keys": []string{"env"}, "allowed_metadata_keys": []string{"role"}, "max_metadata_value_size": 256,
		"service_account_file": sa, "agent_path_template": "/{{ .InstanceName }}",
	})
	if err != nil || !c.UseInstanceMetadata || c.MaxMetadataValueSize != 256 || c.ServiceAccountFile != sa || len(c.ProjectIDAllowList) != 2 {
		t.Fatalf("%+v, %v", c, err)
	}
	for _, tc := range []struct {
		data map[string]any
		want string
	}{
		{map[string]any{}, "projectid_allow_list is required"},
		{map[string]any{"projectid_allow_list": []string{"P"}}, `"P" is not a project ID`},
		{map[string]any{"projectid_allow_list": []string{"p-12345"}, "service_account_file": "/nonexistent.json"}, "service_account_file"},
		{map[string]any{"projectid_allow_list": []string{"p-12345"}, "agent_path_template": "/{{ .X"}, "unclosed action"},
		{map[string]any{"projectid_allow_list": []string{"p-12345"}, "certificates_url": "file:///etc/passwd"}, "certificates_url"},
		{map[string]any{"projectid_allow_list": []string{"p-12345"}, "project_id_allow_list": []string{"x"}}, "project_id_allow_list"},
	} {
		_, err := parse(tc.data)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.data, err, tc.want)
		}
	}
	if _, err := gcpiit.ParseAgentConfig(config.NewPlugin("NodeAttestor", gcpiit.Type, map[string]any{"identity_token_host": "metadata.google.internal", "service_account": "sa@p.iam.gserviceaccount.com"}).Data()); err != nil {
		t.Fatal(err)
	}
	if _, err := gcpiit.ParseAgentConfig(config.NewPlugin("NodeAttestor", gcpiit.Type, map[string]any{"identity_token_host": "http://x"}).Data()); err == nil {
		t.Fatal("identity_token_host URL accepted")
	}
}

func TestSelectorKind(t *testing.T) {
	k := gcpiit.SelectorKind()
	for _, v := range []string{"project-id:p", "zone:us-central1-a", "instance-name:web-1", "sa:a@b", "tag:web", "label:env:prod", "metadata:k:v", "label:env:"} {
		if err := k.Check(v); err != nil {
			t.Errorf("%s: %v", v, err)
		}
	}
	for _, v := range []string{"project:p", "label:env", "metadata:", "instance-id:1"} {
		if err := k.Check(v); err == nil {
			t.Errorf("%s: accepted", v)
		}
	}
}
