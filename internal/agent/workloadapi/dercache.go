package workloadapi

import (
	"crypto/x509"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"weak"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
)

// derCache keeps the encodings FetchX509SVID serves so that warm calls do
// not re-marshal them:
//
//   - per X509-SVID, its concatenated chain and PKCS#8 key, keyed weakly
//     by the leaf certificate. An issued SVID never changes (a renewal is
//     a new leaf object), and the cache only pairs a leaf with the key
//     whose public half it carries, so a leaf always encodes the same way.
//     The entry is deleted once the leaf is garbage collected, so a
//     rotated SVID's key encoding does not outlive its SVID.
//   - per trust domain, the concatenated X.509 authorities of the last
//     bundle served, reused while the authorities are the same objects.
//
// It caches encodings only: which SVIDs a caller gets is decided on every
// call from its attestation.
type derCache struct {
	mu      sync.Mutex
	svids   map[weak.Pointer[x509.Certificate]]svidDER
	bundles map[spiffeid.TrustDomain]bundleDER
}

type svidDER struct {
	intermediates []*x509.Certificate // chain[1:], to check a hit
	chain, key    []byte
}

type bundleDER struct {
	authorities []*x509.Certificate
	der         []byte
}

func newDERCache() *derCache {
	return &derCache{
		svids:   make(map[weak.Pointer[x509.Certificate]]svidDER),
		bundles: make(map[spiffeid.TrustDomain]bundleDER),
	}
}

// svid returns the DER chain and PKCS#8 key of id.
func (c *derCache) svid(id cache.Identity) (chain, key []byte, err error) {
	if len(id.SVID) == 0 {
		return nil, nil, fmt.Errorf("entry %q has an empty SVID chain", id.Entry.ID)
	}
	leaf := id.SVID[0]
	wp := weak.Make(leaf)
	c.mu.Lock()
	e, ok := c.svids[wp]
	c.mu.Unlock()
	if ok && slices.Equal(e.intermediates, id.SVID[1:]) {
		return e.chain, e.key, nil
	}
	key, err = x509.MarshalPKCS8PrivateKey(id.PrivateKey)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal key of entry %q: %w", id.Entry.ID, err)
	}
	e = svidDER{intermediates: slices.Clone(id.SVID[1:]), chain: concatDER(id.SVID), key: key}
	c.mu.Lock()
	if _, had := c.svids[wp]; !had {
		runtime.AddCleanup(leaf, c.forget, wp)
	}
	c.svids[wp] = e
	c.mu.Unlock()
	return e.chain, e.key, nil
}

func (c *derCache) forget(wp weak.Pointer[x509.Certificate]) {
	c.mu.Lock()
	delete(c.svids, wp)
	c.mu.Unlock()
}

// bundle returns the concatenated DER of authorities, the X.509
// authorities of td's bundle.
func (c *derCache) bundle(td spiffeid.TrustDomain, authorities []*x509.Certificate) []byte {
	c.mu.Lock()
	e, ok := c.bundles[td]
	c.mu.Unlock()
	if ok && slices.Equal(e.authorities, authorities) {
		return e.der
	}
	e = bundleDER{authorities: authorities, der: concatDER(authorities)}
	c.mu.Lock()
	c.bundles[td] = e
	c.mu.Unlock()
	return e.der
}

// len reports the number of cached SVID encodings (for tests).
func (c *derCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.svids)
}
