package cache

import (
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/keys"
)

// Revoke is for an agent whose identity the server has revoked (banned or
// evicted): it drops everything the cache holds (entries, X509-SVIDs and
// their keys, bundles, JWT-SVIDs), deletes the persisted files and marks
// the cache revoked. Subscribers and watchers are notified at once, so
// every workload stream sees a state with no entry, and nothing is
// persisted again until SetEntries, which ends the revocation (the agent
// attested again and the server authorized a new set). The in-memory
// state is dropped even when the file cannot be deleted (the error says
// why).
func (c *Cache) Revoke() error {
	c.mu.Lock()
	c.revoked = true
	c.entries = make(map[string]*entryRecord)
	c.svids = make(map[string]*svidRecord)
	c.bundles = make(map[spiffeid.TrustDomain]*bundleRecord)
	c.mu.Unlock()
	c.jwtMu.Lock()
	c.jwts = make(map[jwtKey]*jwtRecord)
	c.jwtMu.Unlock()

	// The file goes first: whoever sees the empty state finds it gone.
	var err error
	if c.cfg.Dir != "" {
		c.persistMu.Lock()
		if rerr := keys.RemoveFile(c.cfg.Dir, FileName); rerr != nil {
			err = fmt.Errorf("delete the persisted agent cache: %w", rerr)
		}
		err = errors.Join(err, c.removeJWTFile())
		c.persistMu.Unlock()
	}
	c.notifyAll()
	select {
	case c.kick <- struct{}{}:
	default:
	}
	return err
}

// Revoked reports whether Revoke was called and no SetEntries since.
func (c *Cache) Revoked() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.revoked
}
