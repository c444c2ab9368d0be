package oidc_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/oidc"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// source is a Source a test sets.
type source struct {
	mu      sync.Mutex
	b       *jwtbundle.Bundle
	contact time.Time
}

func (s *source) JWTBundle() (*jwtbundle.Bundle, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b == nil {
		return nil, oidc.ErrNoBundle
	}
	return s.b, nil
}

func (s *source) LastContact() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.contact
}

func (s *source) set(keys map[string]crypto.PublicKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = jwtbundle.FromJWTAuthorities(td, keys)
}

func newHandler(t *testing.T, src oidc.Source, edit func(*oidc.HandlerConfig)) http.Handler {
	t.Helper()
	cfg := oidc.HandlerConfig{Source: src, Domains: []string{"oidc.example.org", "localhost"}}
	if edit != nil {
		edit(&cfg)
	}
	h, err := oidc.NewHandler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

type discoveryDoc struct {
	Issuer     string   `json:"issuer"`
	JWKSURI    string   `json:"jwks_uri"`
	Responses  []string `json:"response_types_supported"`
	Subjects   []string `json:"subject_types_supported"`
	Algorithms []string `json:"id_token_signing_alg_values_supported"`
	AuthzEnd   *string  `json:"authorization_endpoint"`
}

func get(t *testing.T, h http.Handler, target string, edit func(*http.Request)) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, target, nil)
	if edit != nil {
		edit(r)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func discover(t *testing.T, h http.Handler, target string, edit func(*http.Request)) discoveryDoc {
	t.Helper()
	w := get(t, h, target, edit)
	if w.Code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", target, w.Code, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var d discoveryDoc
	if err := json.Unmarshal(w.Body.Bytes(), &d); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestDiscoveryDocument: the issuer and jwks_uri forms SPIRE's provider
// renders, from the request's host (or the proxy's X-Forwarded-Host), the
// scheme (https unless allowed and plain), the path prefix, and the
// configured jwt_issuer and jwks_uri.
func TestDiscoveryDocument(t *testing.T) {
	src := &source{}
	issuer, _ := url.Parse("https://issuer.example.org/tenant")
	jwks, _ := url.Parse("https://cdn.example.org/jwks.json")
	tls := func(r *http.Request) { r.TLS = &tls.ConnectionState{} }
	for _, tc := range []struct {
		name         string
		edit         func(*oidc.HandlerConfig)
		target       string
		req          func(*http.Request)
		issuer, keys string
	}{
		{"host, https by default", nil, "http://oidc.example.org/.well-known/openid-configuration", nil,
			"https://oidc.example.org", "https://oidc.example.org/keys"},
		{"host with port", nil, "http://localhost:8443/.well-known/openid-configuration", nil,
			"https://localhost:8443", "https://localhost:8443/keys"},
		{"insecure scheme allowed", func(c *oidc.HandlerConfig) { c.AllowInsecureScheme = true }, "http://localhost:8080/.well-known/openid-configuration", nil,
			"http://localhost:8080", "http://localhost:8080/keys"},
		{"insecure scheme allowed, but TLS", func(c *oidc.HandlerConfig) { c.AllowInsecureScheme = true }, "https://localhost/.well-known/openid-configuration", tls,
			"https://localhost", "https://localhost/keys"},
		{"insecure scheme allowed, proxy says https", func(c *oidc.HandlerConfig) { c.AllowInsecureScheme = true }, "http://localhost/.well-known/openid-configuration",
			func(r *http.Request) { r.Header.Set("X-Forwarded-Proto", "https") }, "https://localhost", "https://localhost/keys"},
		{"behind a proxy", nil, "http://10.0.0.1:8080/.well-known/openid-configuration",
			func(r *http.Request) { r.Header.Set("X-Forwarded-Host", "oidc.example.org") }, "https://oidc.example.org", "https://oidc.example.org/keys"},
		{"path prefix", func(c *oidc.HandlerConfig) { c.PathPrefix = "/instance/1/" }, "http://oidc.example.org/instance/1/.well-known/openid-configuration", nil,
			"https://oidc.example.org/instance/1", "https://oidc.example.org/instance/1/keys"},
		{"jwt_issuer", func(c *oidc.HandlerConfig) { c.JWTIssuer = issuer }, "http://oidc.example.org/.well-known/openid-configuration", nil,
			"https://issuer.example.org/tenant", "https://issuer.example.org/tenant/keys"},
		{"jwt_issuer and jwks_uri", func(c *oidc.HandlerConfig) { c.JWTIssuer, c.JWKSURI = issuer, jwks }, "http://oidc.example.org/.well-known/openid-configuration", nil,
			"https://issuer.example.org/tenant", "https://cdn.example.org/jwks.json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := discover(t, newHandler(t, src, tc.edit), tc.target, tc.req)
			if d.Issuer != tc.issuer || d.JWKSURI != tc.keys {
				t.Fatalf("issuer %q jwks_uri %q, want %q %q", d.Issuer, d.JWKSURI, tc.issuer, tc.keys)
			}
			if strings.Join(d.Responses, ",") != "id_token" || strings.Join(d.Subjects, ",") != "public" ||
				strings.Join(d.Algorithms, ",") != "RS256,ES256,ES384" || d.AuthzEnd == nil || *d.AuthzEnd != "" {
				t.Fatalf("fixed fields: %+v", d)
			}
		})
	}
}

// TestDiscoveryRefusals: a host outside domains (or not in punycode form)
// is 400, the message clipped; other methods 405; other paths 404.
func TestDiscoveryRefusals(t *testing.T) {
	h := newHandler(t, &source{}, nil)
	for _, tc := range []struct {
		name   string
		target string
		req    func(*http.Request)
		code   int
		body   string
	}{
		{"other host", "http://evil.example/.well-known/openid-configuration", nil, 400, `domain "evil.example" is not allowed`},
		{"other forwarded host", "http://oidc.example.org/.well-known/openid-configuration",
			func(r *http.Request) { r.Header.Set("X-Forwarded-Host", "evil.example") }, 400, `domain "evil.example" is not allowed`},
		{"upper case", "http://OIDC.example.org/.well-known/openid-configuration", func(r *http.Request) { r.Host = "OIDC.example.org" }, 400, "must already be punycode encoded"},
		{"long host", "http://oidc.example.org/.well-known/openid-configuration",
			func(r *http.Request) {
				r.Header.Set("X-Forwarded-Host", strings.Repeat("a", 60)+"."+strings.Repeat("b", 60)+"."+strings.Repeat("c", 60))
			}, 400, "not allowed"},
		{"POST", "http://oidc.example.org/.well-known/openid-configuration", func(r *http.Request) { r.Method = http.MethodPost }, 405, "method not allowed"},
		{"POST keys", "http://oidc.example.org/keys", func(r *http.Request) { r.Method = http.MethodPost }, 405, "method not allowed"},
		{"other path", "http://oidc.example.org/.well-known/jwks.json", nil, 404, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := get(t, h, tc.target, tc.req)
			if w.Code != tc.code || !strings.Contains(w.Body.String(), tc.body) {
				t.Fatalf("%d %q, want %d %q", w.Code, w.Body, tc.code, tc.body)
			}
			if len(w.Body.String()) > 200 {
				t.Fatalf("the answer echoes %d bytes", len(w.Body.String()))
			}
		})
	}
}

// TestKeys: /keys is the bundle's JWKS with each key's algorithm (and use
// "sig" when asked), never cached; 500 before the source has a bundle, 501
// for a bundle without keys; a new key set is served at once, with a new
// Last-Modified.
func TestKeys(t *testing.T) {
	src := &source{}
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	h := newHandler(t, src, func(c *oidc.HandlerConfig) { c.SetKeyUse = true; c.Clock = clk })
	const keys = "http://oidc.example.org/keys"
	if w := get(t, h, keys, nil); w.Code != http.StatusInternalServerError || !strings.Contains(w.Body.String(), "document not available") {
		t.Fatalf("no bundle yet: %d %q", w.Code, w.Body)
	}
	src.set(nil)
	if w := get(t, h, keys, nil); w.Code != http.StatusNotImplemented {
		t.Fatalf("bundle without keys: %d %q", w.Code, w.Body)
	}

	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	src.set(map[string]crypto.PublicKey{"k-ec256": p256.Public(), "k-ec384": p384.Public(), "k-rsa": rsaKey.Public()})
	w := get(t, h, keys, nil)
	if w.Code != http.StatusOK {
		t.Fatalf("GET /keys: %d %s", w.Code, w.Body)
	}
	for k, v := range map[string]string{"Cache-Control": "no-cache, no-store, must-revalidate", "Content-Type": "application/json", "Access-Control-Allow-Origin": "*"} {
		if got := w.Header().Get(k); got != v {
			t.Errorf("%s: %q, want %q", k, got, v)
		}
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(w.Body.Bytes(), &set); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"k-ec256": "ES256", "k-ec384": "ES384", "k-rsa": "RS256"}
	if len(set.Keys) != len(want) {
		t.Fatalf("%d keys, want %d", len(set.Keys), len(want))
	}
	for i, k := range set.Keys {
		if want[k.KeyID] != k.Algorithm || k.Use != "sig" || !k.Valid() || !k.IsPublic() {
			t.Errorf("key %d: kid %q alg %q use %q", i, k.KeyID, k.Algorithm, k.Use)
		}
		if i > 0 && set.Keys[i-1].KeyID >= k.KeyID {
			t.Errorf("keys not sorted by kid")
		}
	}
	first := w.Header().Get("Last-Modified")
	if w := get(t, h, keys, func(r *http.Request) { r.Header.Set("If-Modified-Since", first) }); w.Code != http.StatusNotModified {
		t.Fatalf("unchanged keys with If-Modified-Since: %d", w.Code)
	}

	// Rotation: the new set is served at once.
	clk.Add(time.Hour)
	src.set(map[string]crypto.PublicKey{"k-ec256": p256.Public(), "k-next": p384.Public()})
	w = get(t, h, keys, func(r *http.Request) { r.Header.Set("If-Modified-Since", first) })
	if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `"k-next"`) || strings.Contains(w.Body.String(), `"k-rsa"`) {
		t.Fatalf("after rotation: %d %s", w.Code, w.Body)
	}
	if w.Header().Get("Last-Modified") == first {
		t.Error("Last-Modified did not change with the keys")
	}

	// Without set_key_use there is no "use".
	plain := newHandler(t, src, nil)
	if body := get(t, plain, keys, nil).Body.String(); strings.Contains(body, `"use"`) {
		t.Fatalf("use set without set_key_use: %s", body)
	}
}

// TestHealth: ready while the source reached its origin within the
// threshold; live too, and also in the first threshold after start.
func TestHealth(t *testing.T) {
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	src := &source{}
	h := oidc.NewHealthHandler(oidc.HealthConfig{Source: src, Threshold: oidc.HealthThreshold(10 * time.Second), ReadyPath: "/ready", LivePath: "/live", Clock: clk})
	if th := oidc.HealthThreshold(10 * time.Second); th != 3*time.Minute {
		t.Fatalf("threshold of a 10s poll: %s, want the 3m minimum", th)
	}
	if th := oidc.HealthThreshold(time.Minute); th != 5*time.Minute {
		t.Fatalf("threshold of a 1m poll: %s, want 5m", th)
	}
	code := func(path string) int { return get(t, h, "http://localhost"+path, nil).Code }
	if code("/ready") != 500 || code("/live") != 200 {
		t.Fatalf("before any contact: ready %d live %d, want 500 200", code("/ready"), code("/live"))
	}
	clk.Add(3 * time.Minute)
	if code("/live") != 500 {
		t.Fatalf("no contact for the whole threshold: live %d", code("/live"))
	}
	src.mu.Lock()
	src.contact = clk.Now()
	src.mu.Unlock()
	if code("/ready") != 200 || code("/live") != 200 {
		t.Fatalf("just reached: ready %d live %d", code("/ready"), code("/live"))
	}
	clk.Add(3*time.Minute - time.Second)
	if code("/ready") != 200 {
		t.Fatal("not ready within the threshold")
	}
	clk.Add(time.Second)
	if code("/ready") != 500 || code("/live") != 500 {
		t.Fatalf("out of contact for the threshold: ready %d live %d", code("/ready"), code("/live"))
	}
}
