package cache

import (
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// maxJWTSVIDs bounds the JWT-SVID cache (audiences are chosen by
// workloads, so the key space is theirs to inflate).
const maxJWTSVIDs = 4096

// JWTSVID is a cached signed JWT-SVID.
type JWTSVID struct {
	Token     string
	IssuedAt  time.Time
	ExpiresAt time.Time
}

func (j JWTSVID) fresh(now time.Time) bool {
	half := j.IssuedAt.Add(j.ExpiresAt.Sub(j.IssuedAt) / 2)
	return now.Before(half)
}

type jwtKey struct {
	id       spiffeid.ID
	audience string
}

func makeJWTKey(id spiffeid.ID, audience []string) jwtKey {
	aud := slices.Clone(audience)
	slices.Sort(aud)
	aud = slices.Compact(aud)
	return jwtKey{id: id, audience: strings.Join(aud, "\x00")}
}

// GetJWTSVID returns a cached JWT-SVID for the SPIFFE ID and audience set
// (order and duplicates ignored) while it is before its half-life.
func (c *Cache) GetJWTSVID(id spiffeid.ID, audience []string) (JWTSVID, bool) {
	k := makeJWTKey(id, audience)
	now := c.clk.Now()
	c.jwtMu.Lock()
	defer c.jwtMu.Unlock()
	j, ok := c.jwts[k]
	if !ok || !j.fresh(now) {
		return JWTSVID{}, false
	}
	return j, true
}

// SetJWTSVID caches a JWT-SVID. Tokens already past half-life, and tokens
// set while the cache is revoked (a mint that raced the revocation), are
// ignored.
func (c *Cache) SetJWTSVID(id spiffeid.ID, audience []string, svid JWTSVID) {
	now := c.clk.Now()
	if !svid.fresh(now) || c.Revoked() {
		return
	}
	k := makeJWTKey(id, audience)
	c.jwtMu.Lock()
	defer c.jwtMu.Unlock()
	if len(c.jwts) >= maxJWTSVIDs {
		for k, j := range c.jwts {
			if !j.fresh(now) {
				delete(c.jwts, k)
			}
		}
		for k := range c.jwts {
			if len(c.jwts) < maxJWTSVIDs {
				break
			}
			delete(c.jwts, k)
		}
	}
	c.jwts[k] = svid
}

// dropJWTSVIDsExcept forgets JWT-SVIDs of SPIFFE IDs no entry has anymore.
func (c *Cache) dropJWTSVIDsExcept(ids map[spiffeid.ID]struct{}) {
	c.jwtMu.Lock()
	defer c.jwtMu.Unlock()
	for k := range c.jwts {
		if _, ok := ids[k.id]; !ok {
			delete(c.jwts, k)
		}
	}
}
