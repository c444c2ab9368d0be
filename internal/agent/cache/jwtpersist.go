package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/keys"
)

// JWTFileName is the name of the persisted JWT-SVIDs inside Config.Dir.
const JWTFileName = "jwt-svids.json"

const jwtDiskVersion = 1

type jwtDiskState struct {
	Version     int                  `json:"version"`
	TrustDomain spiffeid.TrustDomain `json:"trust_domain"`
	SVIDs       []jwtDiskSVID        `json:"jwt_svids"`
}

type jwtDiskSVID struct {
	SPIFFEID  string    `json:"spiffe_id"`
	Audience  []string  `json:"audience"`
	Token     string    `json:"token"`
	IssuedAt  time.Time `json:"issued_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// JWTPath returns the file the cache persists its JWT-SVIDs to, or "" when
// not persisted.
func (c *Cache) JWTPath() string {
	if c.cfg.Dir == "" {
		return ""
	}
	return filepath.Join(c.cfg.Dir, JWTFileName)
}

// persistJWTs writes the unexpired JWT-SVIDs to JWTFileName (atomic,
// 0600), or removes the file when there are none. Nothing is written while
// the cache is revoked (Revoke deleted the file under persistMu).
func (c *Cache) persistJWTs() error {
	if c.cfg.Dir == "" {
		return nil
	}
	c.persistMu.Lock()
	defer c.persistMu.Unlock()
	if c.Revoked() {
		return nil
	}
	now := c.clk.Now()
	st := jwtDiskState{Version: jwtDiskVersion, TrustDomain: c.cfg.TrustDomain, SVIDs: []jwtDiskSVID{}}
	c.jwtMu.Lock()
	for k, r := range c.jwts {
		if !now.Before(r.svid.ExpiresAt) {
			continue
		}
		st.SVIDs = append(st.SVIDs, jwtDiskSVID{
			SPIFFEID: k.id.String(), Audience: r.audience, Token: r.svid.Token,
			IssuedAt: r.svid.IssuedAt.UTC(), ExpiresAt: r.svid.ExpiresAt.UTC(),
		})
	}
	c.jwtMu.Unlock()
	if len(st.SVIDs) == 0 {
		return keys.RemoveFile(c.cfg.Dir, JWTFileName)
	}
	sort.Slice(st.SVIDs, func(i, j int) bool {
		a, b := st.SVIDs[i], st.SVIDs[j]
		if a.SPIFFEID != b.SPIFFEID {
			return a.SPIFFEID < b.SPIFFEID
		}
		return slices.Compare(a.Audience, b.Audience) < 0
	})
	data, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode JWT-SVIDs: %w", err)
	}
	return keys.WriteFileAtomic(c.cfg.Dir, JWTFileName, data)
}

// loadJWTs reads the persisted JWT-SVIDs and keeps those that still
// verify: signed by a JWT authority of our trust domain's bundle (as
// loaded), for the SPIFFE ID of an entry the cache holds, for the audience
// set they are filed under, and not expired at now; within the bounds. A
// missing file is none; a file that does not parse is logged and ignored
// (JWT-SVIDs are minted again once the server is back).
func (c *Cache) loadJWTs(entries map[string]*entryRecord, own *spiffebundle.Bundle, now time.Time) map[jwtKey]*jwtRecord {
	out := make(map[jwtKey]*jwtRecord)
	path := c.JWTPath()
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return out
	}
	if err != nil {
		c.log.Warn("Ignoring the persisted JWT-SVIDs", "path", path, "error", err)
		return out
	}
	st, err := parseJWTFile(data, c.cfg.TrustDomain)
	if err != nil {
		c.log.Warn("Ignoring the persisted JWT-SVIDs", "path", path, "error", err)
		return out
	}
	ids := make(map[spiffeid.ID]struct{}, len(entries))
	for _, r := range entries {
		ids[r.entry.SPIFFEID] = struct{}{}
	}
	dropped := 0
	for _, d := range st.SVIDs {
		id, rec, err := verifyPersistedJWT(d, own, ids, now)
		if err != nil {
			dropped++
			c.log.Debug("Dropping a persisted JWT-SVID", "spiffe_id", clip.Cut(d.SPIFFEID, clip.Max), "error", err)
			continue
		}
		k := makeJWTKey(id, rec.audience)
		if _, dup := out[k]; !dup {
			makeJWTRoom(out, id, now, c.maxJWT, c.maxJWTPerID)
		}
		out[k] = rec
	}
	if dropped > 0 {
		c.log.Info("Dropped persisted JWT-SVIDs that are expired, no longer verify or belong to no entry", "dropped", dropped)
	}
	return out
}

// parseJWTFile decodes a persisted JWT-SVID file of trust domain td.
func parseJWTFile(data []byte, td spiffeid.TrustDomain) (*jwtDiskState, error) {
	var st jwtDiskState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if st.Version != jwtDiskVersion {
		return nil, fmt.Errorf("version %d, want %d", st.Version, jwtDiskVersion)
	}
	if st.TrustDomain != td {
		return nil, fmt.Errorf("trust domain %s, not %q", clip.Quote(st.TrustDomain.Name()), td)
	}
	return &st, nil
}

// jwtAlgorithms are the signature algorithms a JWT-SVID may use (the
// JWT-SVID specification's, as go-spiffe's jwtsvid accepts them).
var jwtAlgorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.ES256, jose.ES384, jose.ES512, jose.PS256, jose.PS384, jose.PS512,
}

// verifyPersistedJWT checks a persisted JWT-SVID as a relying party of our
// trust domain would at now, against the bundle own, and that its subject
// is one of ids and its audience the one it is filed under. It verifies
// with the cache's clock (go-spiffe's jwtsvid reads the real one).
func verifyPersistedJWT(d jwtDiskSVID, own *spiffebundle.Bundle, ids map[spiffeid.ID]struct{}, now time.Time) (spiffeid.ID, *jwtRecord, error) {
	id, err := spiffeid.FromString(d.SPIFFEID)
	if err != nil {
		return spiffeid.ID{}, nil, fmt.Errorf("SPIFFE ID: %w", err)
	}
	if _, ok := ids[id]; !ok {
		return spiffeid.ID{}, nil, errors.New("no entry has this SPIFFE ID anymore")
	}
	if len(d.Audience) == 0 {
		return spiffeid.ID{}, nil, errors.New("no audience")
	}
	if len(d.Token) > MaxJWTSVIDLen {
		return spiffeid.ID{}, nil, fmt.Errorf("token longer than %d bytes", MaxJWTSVIDLen)
	}
	if own == nil || id.TrustDomain() != own.TrustDomain() {
		return spiffeid.ID{}, nil, errors.New("no bundle of its trust domain")
	}
	tok, err := jwt.ParseSigned(d.Token, jwtAlgorithms)
	if err != nil {
		return spiffeid.ID{}, nil, fmt.Errorf("parse token: %w", err)
	}
	h := tok.Headers[0]
	if typ, ok := h.ExtraHeaders[jose.HeaderType]; ok && typ != "JWT" && typ != "JOSE" {
		return spiffeid.ID{}, nil, errors.New("token type is neither JWT nor JOSE")
	}
	key, ok := own.FindJWTAuthority(h.KeyID)
	if h.KeyID == "" || !ok {
		return spiffeid.ID{}, nil, fmt.Errorf("signing key %s is not in the trust bundle", clip.Quote(h.KeyID))
	}
	var claims jwt.Claims
	if err := tok.Claims(key, &claims); err != nil {
		return spiffeid.ID{}, nil, fmt.Errorf("signature: %w", err)
	}
	if claims.Subject != id.String() {
		return spiffeid.ID{}, nil, fmt.Errorf("token subject %s is not the SPIFFE ID it is filed under", clip.Quote(claims.Subject))
	}
	aud := normalizeAudience(d.Audience)
	if !slices.Equal(normalizeAudience(claims.Audience), aud) {
		return spiffeid.ID{}, nil, errors.New("token audience is not the one it is filed under")
	}
	if claims.Expiry == nil {
		return spiffeid.ID{}, nil, errors.New("token has no exp")
	}
	exp := claims.Expiry.Time()
	if !now.Before(exp) {
		return spiffeid.ID{}, nil, fmt.Errorf("expired at %s", exp.UTC().Format(time.RFC3339))
	}
	if claims.NotBefore != nil && now.Before(claims.NotBefore.Time()) {
		return spiffeid.ID{}, nil, errors.New("token not valid yet")
	}
	iat := d.IssuedAt
	if claims.IssuedAt != nil {
		iat = claims.IssuedAt.Time()
	}
	if !iat.Before(exp) {
		return spiffeid.ID{}, nil, errors.New("issued at or after its exp")
	}
	return id, &jwtRecord{svid: JWTSVID{Token: d.Token, IssuedAt: iat, ExpiresAt: exp}, audience: aud}, nil
}

// JWTSVIDFromToken reads a JWT-SVID the server minted for id and audience
// into what the cache keeps: it checks the token's subject and audience set
// (order and duplicates ignored) and takes its iat and exp. It verifies
// neither the signature (the token came over the authenticated connection
// to the server) nor the time: a server whose clock is a little ahead of
// the agent's issues tokens "in the future", which relying parties accept
// within their leeway.
func JWTSVIDFromToken(token string, id spiffeid.ID, audience []string) (JWTSVID, error) {
	tok, err := jwt.ParseSigned(token, jwtAlgorithms)
	if err != nil {
		return JWTSVID{}, fmt.Errorf("parse JWT-SVID: %w", err)
	}
	var claims jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&claims); err != nil {
		return JWTSVID{}, fmt.Errorf("JWT-SVID claims: %w", err)
	}
	switch {
	case claims.Subject != id.String():
		return JWTSVID{}, fmt.Errorf("JWT-SVID subject %s is not %s", clip.Quote(claims.Subject), id)
	case !slices.Equal(normalizeAudience(claims.Audience), normalizeAudience(audience)):
		return JWTSVID{}, errors.New("JWT-SVID audience is not the one requested")
	case claims.Expiry == nil:
		return JWTSVID{}, errors.New("JWT-SVID has no exp")
	}
	j := JWTSVID{Token: token, ExpiresAt: claims.Expiry.Time()}
	if claims.IssuedAt != nil {
		j.IssuedAt = claims.IssuedAt.Time()
	}
	return j, nil
}

// removeJWTFile deletes the persisted JWT-SVIDs (the caller holds
// persistMu).
func (c *Cache) removeJWTFile() error {
	if c.cfg.Dir == "" {
		return nil
	}
	if err := keys.RemoveFile(c.cfg.Dir, JWTFileName); err != nil {
		return fmt.Errorf("delete the persisted JWT-SVIDs: %w", err)
	}
	return nil
}
