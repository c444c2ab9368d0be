package cache

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/clip"
)

// Bounds of the JWT-SVID cache (Config.MaxJWTSVIDs, MaxJWTSVIDsPerID):
// audiences are chosen by workloads, so the key space is theirs to inflate.
// The total is SPIRE's jwt_svid_cache_max_size default.
const (
	DefaultMaxJWTSVIDs      = 1000
	DefaultMaxJWTSVIDsPerID = 100
	// MaxJWTSVIDLen is the longest token the cache keeps (a JWT-SVID with a
	// few audiences is well under 2 KiB); longer ones are served but minted
	// again on every request.
	MaxJWTSVIDLen = 8 << 10
)

// JWTOfflineMargin is how much of a cached JWT-SVID's lifetime must be
// left for it to be served while the server cannot mint a new one: a
// token is handed out until min(JWTOfflineMargin, a quarter of its
// lifetime) before its exp, so that it is still valid when the workload
// presents it to a relying party whose clock may be a little ahead. Never
// past exp.
const JWTOfflineMargin = 30 * time.Second

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

// OfflineUntil is the instant from which the token is no longer served
// offline (see JWTOfflineMargin).
func (j JWTSVID) OfflineUntil() time.Time {
	margin := min(JWTOfflineMargin, j.ExpiresAt.Sub(j.IssuedAt)/4)
	return j.ExpiresAt.Add(-max(margin, 0))
}

// jwtKey identifies a JWT-SVID: SPIFFE ID and audience set (sorted,
// duplicates removed, each audience length-prefixed so that no two sets
// share a key).
type jwtKey struct {
	id       spiffeid.ID
	audience string
}

func normalizeAudience(audience []string) []string {
	aud := slices.Clone(audience)
	slices.Sort(aud)
	return slices.Compact(aud)
}

func makeJWTKey(id spiffeid.ID, audience []string) jwtKey {
	var b strings.Builder
	for _, a := range normalizeAudience(audience) {
		b.WriteString(strconv.Itoa(len(a)))
		b.WriteByte(':')
		b.WriteString(a)
	}
	return jwtKey{id: id, audience: b.String()}
}

type jwtRecord struct {
	svid     JWTSVID
	audience []string // normalized
}

// GetJWTSVID returns a cached JWT-SVID for the SPIFFE ID and audience set
// (order and duplicates ignored) while it is before its half-life: what an
// agent connected to its server serves without asking for a new one.
func (c *Cache) GetJWTSVID(id spiffeid.ID, audience []string) (JWTSVID, bool) {
	k := makeJWTKey(id, audience)
	now := c.clk.Now()
	c.jwtMu.Lock()
	defer c.jwtMu.Unlock()
	r, ok := c.jwts[k]
	if !ok || !r.svid.fresh(now) {
		return JWTSVID{}, false
	}
	return r.svid, true
}

// NoJWTSVIDError says why OfflineJWTSVID has no token to serve.
type NoJWTSVIDError struct {
	ID       spiffeid.ID
	Audience []string
	// Cached is the token held for this SPIFFE ID and audience set, too
	// close to (or past) its exp to be served; zero when none is held.
	Cached JWTSVID
	Now    time.Time
}

func (e *NoJWTSVIDError) Error() string {
	aud := quoteAudience(e.Audience)
	switch {
	case e.Cached.Token == "":
		return fmt.Sprintf("no cached JWT-SVID for audience %s of %s", aud, e.ID)
	case !e.Now.Before(e.Cached.ExpiresAt):
		return fmt.Sprintf("the cached JWT-SVID for audience %s of %s expired at %s", aud, e.ID,
			e.Cached.ExpiresAt.UTC().Format(time.RFC3339))
	default:
		return fmt.Sprintf("the cached JWT-SVID for audience %s of %s expires at %s, too soon to serve (served until %s before exp)",
			aud, e.ID, e.Cached.ExpiresAt.UTC().Format(time.RFC3339), e.Cached.ExpiresAt.Sub(e.Cached.OfflineUntil()))
	}
}

// quoteAudience renders an audience set for a message: its first two
// members quoted and clipped (they come from the workload), then how many
// more there are.
func quoteAudience(audience []string) string {
	aud := normalizeAudience(audience)
	var b strings.Builder
	for i, a := range aud {
		if i == 2 {
			fmt.Fprintf(&b, " and %d more", len(aud)-2)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(clip.Quote(a))
	}
	return b.String()
}

// OfflineJWTSVID returns the cached JWT-SVID for the SPIFFE ID and
// audience set to serve while no new one can be minted (the server is
// unreachable): any cached token, past its half-life or not, until
// OfflineUntil; never a token past exp. Otherwise it returns a
// *NoJWTSVIDError.
func (c *Cache) OfflineJWTSVID(id spiffeid.ID, audience []string) (JWTSVID, error) {
	k := makeJWTKey(id, audience)
	now := c.clk.Now()
	c.jwtMu.Lock()
	r, ok := c.jwts[k]
	c.jwtMu.Unlock()
	if !ok {
		return JWTSVID{}, &NoJWTSVIDError{ID: id, Audience: audience, Now: now}
	}
	if !now.Before(r.svid.OfflineUntil()) || !now.Before(r.svid.ExpiresAt) {
		return JWTSVID{}, &NoJWTSVIDError{ID: id, Audience: audience, Cached: r.svid, Now: now}
	}
	return r.svid, nil
}

// JWTSVIDStats summarizes the JWT-SVIDs the cache could serve offline at
// now: how many there are and the earliest instant one of them stops being
// served (its OfflineUntil; zero when there are none).
func (c *Cache) JWTSVIDStats(now time.Time) (count int, earliest time.Time) {
	c.jwtMu.Lock()
	defer c.jwtMu.Unlock()
	for _, r := range c.jwts {
		until := r.svid.OfflineUntil()
		if !now.Before(until) {
			continue
		}
		count++
		if earliest.IsZero() || until.Before(earliest) {
			earliest = until
		}
	}
	return count, earliest
}

// SetJWTSVID caches a JWT-SVID and persists the JWT-SVID set (see
// Persistence in the package doc). Tokens already past half-life or longer
// than MaxJWTSVIDLen, and tokens set while the cache is revoked (a mint
// that raced the revocation), are ignored. When a bound is reached the
// token with the earliest expiry of the SPIFFE ID holding the most tokens
// makes room.
func (c *Cache) SetJWTSVID(id spiffeid.ID, audience []string, svid JWTSVID) {
	now := c.clk.Now()
	if !svid.fresh(now) || len(svid.Token) > MaxJWTSVIDLen {
		return
	}
	k := makeJWTKey(id, audience)
	c.jwtMu.Lock()
	// Checked under jwtMu: Revoke marks the cache revoked before it takes
	// jwtMu to drop the tokens, so a token set here is either refused or
	// dropped by it.
	if c.Revoked() {
		c.jwtMu.Unlock()
		return
	}
	if _, ok := c.jwts[k]; !ok {
		makeJWTRoom(c.jwts, id, now, c.maxJWT, c.maxJWTPerID)
	}
	c.jwts[k] = &jwtRecord{svid: svid, audience: normalizeAudience(audience)}
	c.jwtMu.Unlock()
	if err := c.persistJWTs(); err != nil {
		c.log.Error("Failed to persist JWT-SVIDs", "dir", c.cfg.Dir, "error", err)
	}
}

// makeJWTRoom makes room in m for one more token of id, within max
// tokens in all and perID per SPIFFE ID: expired tokens go first; then,
// while id is at its bound, its token expiring first; then, while m is
// full, the token expiring first of the SPIFFE ID holding the most (so a
// workload asking for many audiences evicts its own tokens before anyone
// else's).
func makeJWTRoom(m map[jwtKey]*jwtRecord, id spiffeid.ID, now time.Time, maxAll, perID int) {
	count := make(map[spiffeid.ID]int)
	for k, r := range m {
		if !now.Before(r.svid.ExpiresAt) {
			delete(m, k)
			continue
		}
		count[k.id]++
	}
	for count[id] >= perID && evictJWTOf(m, id) {
		count[id]--
	}
	for len(m) >= maxAll {
		var most spiffeid.ID
		for i, n := range count {
			if n > count[most] || (n == count[most] && i.String() < most.String()) {
				most = i
			}
		}
		if !evictJWTOf(m, most) {
			return
		}
		count[most]--
	}
}

// evictJWTOf drops from m the token of id that expires first (ties: the
// smaller key, so eviction is deterministic).
func evictJWTOf(m map[jwtKey]*jwtRecord, id spiffeid.ID) bool {
	var (
		victim jwtKey
		found  *jwtRecord
	)
	for k, r := range m {
		if k.id != id {
			continue
		}
		if found == nil || cmp.Or(r.svid.ExpiresAt.Compare(found.svid.ExpiresAt), strings.Compare(k.audience, victim.audience)) < 0 {
			victim, found = k, r
		}
	}
	if found == nil {
		return false
	}
	delete(m, victim)
	return true
}

// dropJWTSVIDsExcept forgets (and unpersists) the JWT-SVIDs of SPIFFE IDs
// no entry has anymore.
func (c *Cache) dropJWTSVIDsExcept(ids map[spiffeid.ID]struct{}) {
	c.jwtMu.Lock()
	dropped := false
	for k := range c.jwts {
		if _, ok := ids[k.id]; !ok {
			delete(c.jwts, k)
			dropped = true
		}
	}
	c.jwtMu.Unlock()
	if dropped {
		if err := c.persistJWTs(); err != nil {
			c.log.Error("Failed to persist JWT-SVIDs", "dir", c.cfg.Dir, "error", err)
		}
	}
}
