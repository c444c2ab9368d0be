// Package jwtkeys fetches and caches the public keys a cloud provider signs
// its instance tokens with (Google's OAuth 2.0 certificates for gcp_iit,
// Azure AD's JWKS for azure_msi): keys are used for as long as the answer
// says (Cache-Control max-age, else Expires, else a default), an unknown
// key ID fetches them again at most every MinRefetch (a forged kid must not
// make the server hammer the provider), and the last keys stay in use
// while the endpoint fails.
package jwtkeys

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/sigil-spiffe/sigil/internal/clip"
)

// MinRefetch is how often an unknown key ID may fetch the keys again.
const MinRefetch = 30 * time.Second

// MaxResponse bounds one answer of a key endpoint.
const MaxResponse = 1 << 20

const timeout = 10 * time.Second

// ErrUnknownKey: the key ID is not among the provider's keys.
var ErrUnknownKey = errors.New("unknown key")

// FetchFunc gets the current keys by key ID and how long they may be used.
type FetchFunc func(ctx context.Context) (keys map[string]any, ttl time.Duration, err error)

// Set is a cache of keys.
type Set struct {
	fetch FetchFunc
	now   func() time.Time

	mu      sync.Mutex
	keys    map[string]any
	expiry  time.Time
	fetched time.Time
}

// New returns a cache fetching with fetch; now is its clock.
func New(fetch FetchFunc, now func() time.Time) *Set {
	return &Set{fetch: fetch, now: now}
}

// Key returns the key of kid, fetching the keys when they expired, or when
// kid is unknown and they were not fetched within MinRefetch. Errors:
// ErrUnknownKey, or the fetch's error when no keys were ever fetched.
func (s *Set) Key(ctx context.Context, kid string) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	stale := s.keys == nil || now.After(s.expiry)
	if _, ok := s.keys[kid]; !ok && now.Sub(s.fetched) >= MinRefetch {
		stale = true
	}
	if stale {
		s.fetched = now
		ctx, cancel := context.WithTimeout(ctx, timeout)
		keys, ttl, err := s.fetch(ctx)
		cancel()
		switch {
		case err == nil:
			s.keys, s.expiry = keys, now.Add(ttl)
		case s.keys == nil:
			return nil, err
		}
		// On error, keep serving the previous keys.
	}
	if key, ok := s.keys[kid]; ok {
		return key, nil
	}
	return nil, fmt.Errorf("%w %s", ErrUnknownKey, clip.Quote(kid))
}

// Get GETs url and returns the body (at most MaxResponse bytes) of a 200
// answer, and its headers.
func Get(ctx context.Context, client *http.Client, url string) ([]byte, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponse+1))
	if err != nil {
		return nil, nil, fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if len(body) > MaxResponse {
		return nil, nil, fmt.Errorf("GET %s: more than %d bytes", url, MaxResponse)
	}
	return body, resp.Header, nil
}

// TTL reads Cache-Control max-age, else Expires, else def.
func TTL(h http.Header, now time.Time, def time.Duration) time.Duration {
	for _, d := range strings.Split(h.Get("Cache-Control"), ",") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(d), "max-age="); ok {
			if s, err := strconv.Atoi(v); err == nil && s >= 0 {
				return time.Duration(s) * time.Second
			}
		}
	}
	if t, err := http.ParseTime(h.Get("Expires")); err == nil {
		return t.Sub(now)
	}
	return def
}

// Parse reads a JWKS ({"keys": [...]}) or Google's v1 form ({"<kid>":
// "<PEM certificate>", ...}) and returns the public keys by key ID.
func Parse(body []byte) (map[string]any, error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(body, &probe); err != nil {
		return nil, fmt.Errorf("not a JSON object: %s", clip.Cut(err.Error(), 100))
	}
	keys := map[string]any{}
	if _, ok := probe["keys"]; ok {
		var set jose.JSONWebKeySet
		if err := json.Unmarshal(body, &set); err != nil {
			return nil, fmt.Errorf("not a JWKS: %s", clip.Cut(err.Error(), 100))
		}
		for _, k := range set.Keys {
			if k.KeyID != "" && k.Valid() && k.IsPublic() {
				keys[k.KeyID] = k.Key
			}
		}
	} else {
		for kid, raw := range probe {
			var p string
			if err := json.Unmarshal(raw, &p); err != nil {
				return nil, fmt.Errorf("key %s is not a PEM string", clip.Quote(kid))
			}
			b, _ := pem.Decode([]byte(p))
			if b == nil || b.Type != "CERTIFICATE" {
				return nil, fmt.Errorf("key %s is not a PEM certificate", clip.Quote(kid))
			}
			cert, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("key %s: %w", clip.Quote(kid), err)
			}
			keys[kid] = cert.PublicKey
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("no key")
	}
	return keys, nil
}
