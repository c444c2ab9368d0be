package gcpiit

import (
	"context"
	"crypto/rsa"
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

// DefaultCertificatesURL is where Google publishes the certificates of the
// keys that sign identity tokens (SPIRE's URL).
const DefaultCertificatesURL = "https://www.googleapis.com/oauth2/v1/certs"

// Key cache bounds.
const (
	// defaultKeysTTL: how long keys are used when the answer says nothing.
	defaultKeysTTL = 5 * time.Minute
	// minRefetch: an unknown key ID fetches the keys again at most this
	// often (a forged kid must not make the server hammer Google).
	minRefetch      = 30 * time.Second
	maxKeysResponse = 1 << 20
	keysTimeout     = 10 * time.Second
)

// keySet fetches and caches Google's token signing keys.
type keySet struct {
	url    string
	client *http.Client
	now    func() time.Time

	mu      sync.Mutex
	keys    map[string]*rsa.PublicKey
	expiry  time.Time
	fetched time.Time
}

// errUnknownKey: the token's key ID is not among Google's keys.
var errUnknownKey = errors.New("unknown key")

// key returns the key of kid, fetching the keys when they expired, or
// when kid is unknown and they were not fetched within minRefetch.
func (k *keySet) key(ctx context.Context, kid string) (*rsa.PublicKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.now()
	stale := k.keys == nil || now.After(k.expiry)
	if _, ok := k.keys[kid]; !ok && now.Sub(k.fetched) >= minRefetch {
		stale = true
	}
	if stale {
		if err := k.fetch(ctx, now); err != nil {
			if k.keys == nil {
				return nil, err
			}
			// Keep serving the previous keys while the endpoint fails.
		}
	}
	if key, ok := k.keys[kid]; ok {
		return key, nil
	}
	return nil, fmt.Errorf("%w %s", errUnknownKey, clip.Quote(kid))
}

func (k *keySet) fetch(ctx context.Context, now time.Time) error {
	ctx, cancel := context.WithTimeout(ctx, keysTimeout)
	defer cancel()
	k.fetched = now
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.url, nil)
	if err != nil {
		return fmt.Errorf("google certificates: %w", err)
	}
	resp, err := k.client.Do(req)
	if err != nil {
		return fmt.Errorf("google certificates: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxKeysResponse+1))
	if err != nil {
		return fmt.Errorf("google certificates: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("google certificates: GET %s: %s", k.url, resp.Status)
	}
	if len(body) > maxKeysResponse {
		return fmt.Errorf("google certificates: GET %s: more than %d bytes", k.url, maxKeysResponse)
	}
	keys, err := parseKeys(body)
	if err != nil {
		return fmt.Errorf("google certificates: GET %s: %w", k.url, err)
	}
	k.keys = keys
	k.expiry = now.Add(keysTTL(resp.Header, now))
	return nil
}

// keysTTL reads Cache-Control max-age, else Expires.
func keysTTL(h http.Header, now time.Time) time.Duration {
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
	return defaultKeysTTL
}

// parseKeys reads the v1 form ({"<kid>": "<PEM certificate>", ...}) or a
// JWKS ({"keys": [...]}); only RSA keys are kept.
func parseKeys(body []byte) (map[string]*rsa.PublicKey, error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(body, &probe); err != nil {
		return nil, fmt.Errorf("not a JSON object: %s", clip.Cut(err.Error(), 100))
	}
	keys := map[string]*rsa.PublicKey{}
	if _, ok := probe["keys"]; ok {
		var set jose.JSONWebKeySet
		if err := json.Unmarshal(body, &set); err != nil {
			return nil, fmt.Errorf("not a JWKS: %s", clip.Cut(err.Error(), 100))
		}
		for _, k := range set.Keys {
			if pub, ok := k.Key.(*rsa.PublicKey); ok && k.KeyID != "" {
				keys[k.KeyID] = pub
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
			if pub, ok := cert.PublicKey.(*rsa.PublicKey); ok {
				keys[kid] = pub
			}
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("no RSA key")
	}
	return keys, nil
}
