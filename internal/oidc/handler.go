package oidc

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"golang.org/x/net/idna"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/clock"
)

// Paths served, below HandlerConfig.PathPrefix.
const (
	DiscoveryPath = "/.well-known/openid-configuration"
	KeysPath      = "/keys"
)

// HandlerConfig configures the provider's HTTP handler.
type HandlerConfig struct {
	// Source gives the keys.
	Source Source
	// Domains are the host names discovery requests may name (Host, or
	// X-Forwarded-Host from a proxy); others get 400.
	Domains []string
	// AllowInsecureScheme renders http:// URLs for requests that arrived
	// without TLS and without X-Forwarded-Proto https.
	AllowInsecureScheme bool
	// SetKeyUse adds "use": "sig" to every key.
	SetKeyUse bool
	// JWTIssuer, when set, is the issuer; else scheme://host[PathPrefix].
	JWTIssuer *url.URL
	// JWKSURI, when set, is jwks_uri; else the keys path next to the
	// issuer (JWTIssuer's host and path when set, else the request's).
	JWKSURI *url.URL
	// PathPrefix prefixes both paths ("" or "/": none).
	PathPrefix string
	Log        *slog.Logger
	Clock      clock.Clock
}

// handler serves discovery and keys.
type handler struct {
	cfg     HandlerConfig
	log     *slog.Logger
	clk     clock.Clock
	allowed map[string]bool
	prefix  string // "/" or "/x" (no trailing slash)

	mu       sync.Mutex
	rendered *jwtbundle.Bundle // the bundle jwks was rendered from
	jwks     []byte
	modTime  time.Time
}

// NewHandler returns the provider's handler: GET PathPrefix +
// DiscoveryPath and PathPrefix + KeysPath, as SPIRE's provider serves them.
func NewHandler(cfg HandlerConfig) (http.Handler, error) {
	if cfg.Source == nil {
		return nil, errors.New("oidc: a key source is required")
	}
	if len(cfg.Domains) == 0 {
		return nil, errors.New("oidc: at least one domain is required")
	}
	h := &handler{cfg: cfg, log: cfg.Log, clk: clock.OrReal(cfg.Clock), allowed: map[string]bool{}}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	for _, d := range cfg.Domains {
		key, err := domainKey(d)
		if err != nil {
			return nil, fmt.Errorf("oidc: %w", err)
		}
		h.allowed[key] = true
	}
	h.prefix = "/" + strings.Trim(cfg.PathPrefix, "/")
	mux := http.NewServeMux()
	mux.HandleFunc(h.path(DiscoveryPath), h.serveDiscovery)
	mux.HandleFunc(h.path(KeysPath), h.serveKeys)
	return mux, nil
}

// path is p below the prefix.
func (h *handler) path(p string) string {
	if h.prefix == "/" {
		return p
	}
	return h.prefix + p
}

// domainKey is how a domain is compared: it must already be in its ASCII
// (punycode, lower-case) form, as SPIRE's provider requires.
func domainKey(domain string) (string, error) {
	ascii, err := idna.Lookup.ToASCII(domain)
	if err != nil {
		return "", fmt.Errorf("domain %s is not a valid domain name", clip.Quote(domain))
	}
	if ascii != domain {
		return "", fmt.Errorf("domain %s must already be punycode encoded", clip.Quote(domain))
	}
	return ascii, nil
}

// checkHost applies the domain allowlist to a Host value (host or
// host:port).
func (h *handler) checkHost(host string) error {
	domain, _, err := net.SplitHostPort(host)
	if err != nil {
		domain = host
	}
	key, err := domainKey(domain)
	if err != nil {
		return err
	}
	if !h.allowed[key] {
		return fmt.Errorf("domain %s is not allowed", clip.Quote(domain))
	}
	return nil
}

// forwardedScheme is the scheme a proxy says the client used
// (X-Forwarded-Proto, X-Forwarded-Scheme, or Forwarded's proto), lower
// case; "" when none says.
func forwardedScheme(r *http.Request) string {
	for _, hdr := range []string{"X-Forwarded-Proto", "X-Forwarded-Scheme"} {
		if v := r.Header.Get(hdr); v != "" {
			return strings.ToLower(strings.TrimSpace(strings.Split(v, ",")[0]))
		}
	}
	if v := r.Header.Get("Forwarded"); v != "" {
		for _, part := range strings.Split(strings.Split(v, ",")[0], ";") {
			k, val, ok := strings.Cut(strings.TrimSpace(part), "=")
			if ok && strings.EqualFold(k, "proto") {
				return strings.ToLower(strings.Trim(val, `"`))
			}
		}
	}
	return ""
}

// discovery is the document, with the fields SPIRE's provider sets.
type discovery struct {
	Issuer                           string   `json:"issuer"`
	JWKSURI                          string   `json:"jwks_uri"`
	AuthorizationEndpoint            string   `json:"authorization_endpoint"`
	ResponseTypesSupported           []string `json:"response_types_supported"`
	SubjectTypesSupported            []string `json:"subject_types_supported"`
	IDTokenSigningAlgValuesSupported []string `json:"id_token_signing_alg_values_supported"`
}

func (h *handler) serveDiscovery(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	// Behind a proxy the client's host is X-Forwarded-Host.
	host := r.Host
	if fwd := r.Header.Get("X-Forwarded-Host"); fwd != "" {
		host = fwd
	}
	if err := h.checkHost(host); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	scheme := "https"
	if h.cfg.AllowInsecureScheme && r.TLS == nil && forwardedScheme(r) != "https" {
		scheme = "http"
	}
	issuer := h.cfg.JWTIssuer
	if issuer == nil {
		issuer = &url.URL{Scheme: scheme, Host: host}
		if h.prefix != "/" {
			issuer.Path = h.prefix
		}
	}
	var jwksURI *url.URL
	switch {
	case h.cfg.JWKSURI != nil:
		jwksURI = h.cfg.JWKSURI
	case h.cfg.JWTIssuer != nil:
		// As SPIRE: the keys next to the configured issuer.
		jwksURI = &url.URL{Scheme: issuer.Scheme, Host: issuer.Host, Path: strings.TrimSuffix(issuer.Path, "/") + KeysPath}
	default:
		jwksURI = &url.URL{Scheme: scheme, Host: host, Path: h.path(KeysPath)}
	}
	doc, err := json.MarshalIndent(discovery{
		Issuer:                           issuer.String(),
		JWKSURI:                          jwksURI.String(),
		ResponseTypesSupported:           []string{"id_token"},
		SubjectTypesSupported:            []string{"public"},
		IDTokenSigningAlgValuesSupported: []string{"RS256", "ES256", "ES384"},
	}, "", "  ")
	if err != nil {
		http.Error(w, "failed to marshal document", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Access-Control-Allow-Origin", "*")
	_, _ = w.Write(doc)
}

func (h *handler) serveKeys(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	b, err := h.cfg.Source.JWTBundle()
	if err != nil {
		http.Error(w, "document not available", http.StatusInternalServerError)
		return
	}
	jwks, modTime, err := h.render(b)
	if err != nil {
		h.log.Error("Failed to render the JWKS", "error", err)
		http.Error(w, "failed to marshal JWKS", http.StatusInternalServerError)
		return
	}
	if jwks == nil {
		http.Error(w, "jwt not supported/enabled in this service", http.StatusNotImplemented)
		return
	}
	// As SPIRE: never cached, so a rotation is seen at once.
	w.Header().Set("Cache-Control", "no-cache, no-store, must-revalidate")
	w.Header().Set("Pragma", "no-cache")
	w.Header().Set("Expires", "0")
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Access-Control-Allow-Origin", "*")
	http.ServeContent(w, r, "keys", modTime, bytes.NewReader(jwks))
}

// render returns the JWKS of b (nil when b has no key) and when its
// content last changed, re-rendering only when b changed.
func (h *handler) render(b *jwtbundle.Bundle) ([]byte, time.Time, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.rendered != nil && h.rendered.Equal(b) {
		return h.jwks, h.modTime, nil
	}
	auths := b.JWTAuthorities()
	var jwks []byte
	if len(auths) > 0 {
		kids := make([]string, 0, len(auths))
		for kid := range auths {
			kids = append(kids, kid)
		}
		sort.Strings(kids)
		set := jose.JSONWebKeySet{Keys: make([]jose.JSONWebKey, 0, len(kids))}
		for _, kid := range kids {
			k := jose.JSONWebKey{Key: auths[kid], KeyID: kid, Algorithm: algorithm(auths[kid])}
			if h.cfg.SetKeyUse {
				k.Use = "sig"
			}
			set.Keys = append(set.Keys, k)
		}
		var err error
		if jwks, err = json.MarshalIndent(set, "", "  "); err != nil {
			return nil, time.Time{}, err
		}
	}
	h.rendered, h.jwks, h.modTime = b, jwks, h.clk.Now()
	return jwks, h.modTime, nil
}

// algorithm is the JWS algorithm a key signs with: the one Sigil's and
// SPIRE's servers use for its type ("" when unknown).
func algorithm(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return string(jose.RS256)
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return string(jose.ES256)
		case elliptic.P384():
			return string(jose.ES384)
		case elliptic.P521():
			return string(jose.ES512)
		}
	case ed25519.PublicKey:
		return string(jose.EdDSA)
	}
	return ""
}
