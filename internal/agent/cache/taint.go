package cache

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"strings"
	"time"
)

// TaintX509SVIDs marks every cached X509-SVID whose chain leads to one of
// the tainted authorities as due for renewal (NeedsSVID returns its
// entry until a new SVID is set), as SPIRE's agent does when its server
// taints an authority before revoking it. It returns how many SVIDs it
// marked; SVIDs already marked are not counted again.
func (c *Cache) TaintX509SVIDs(tainted []*x509.Certificate) int {
	if len(tainted) == 0 {
		return 0
	}
	now := c.clk.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, s := range c.svids {
		if !s.tainted && SignedBy(s.chain, tainted, now) {
			s.tainted = true
			n++
		}
	}
	return n
}

// SignedBy reports whether chain (leaf first, then intermediates) verifies
// up to one of roots at now.
func SignedBy(chain, roots []*x509.Certificate, now time.Time) bool {
	if len(chain) == 0 || len(roots) == 0 {
		return false
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

// DropJWTSVIDsSignedBy forgets (and unpersists) the cached JWT-SVIDs
// signed with one of the tainted JWT keys (by the kid of their header), so
// the next request mints one with the current key, as SPIRE's agent does.
// It returns how many it dropped.
func (c *Cache) DropJWTSVIDsSignedBy(kids map[string]struct{}) int {
	if len(kids) == 0 {
		return 0
	}
	c.jwtMu.Lock()
	n := 0
	for k, r := range c.jwts {
		if _, ok := kids[jwtKeyID(r.svid.Token)]; ok {
			delete(c.jwts, k)
			n++
		}
	}
	c.jwtMu.Unlock()
	if n > 0 {
		if err := c.persistJWTs(); err != nil {
			c.log.Error("Failed to persist JWT-SVIDs", "dir", c.cfg.Dir, "error", err)
		}
	}
	return n
}

// jwtKeyID is the kid of a compact JWS's header ("" if none or malformed).
func jwtKeyID(token string) string {
	h, _, ok := strings.Cut(token, ".")
	if !ok {
		return ""
	}
	raw, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil {
		return ""
	}
	var hdr struct {
		Kid string `json:"kid"`
	}
	if json.Unmarshal(raw, &hdr) != nil {
		return ""
	}
	return hdr.Kid
}
