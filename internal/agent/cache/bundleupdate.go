package cache

import (
	"errors"
	"sort"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// BundleUpdate says how old a cached bundle is: when it was last known
// current.
type BundleUpdate struct {
	TrustDomain spiffeid.TrustDomain
	// UpdatedAt is when the bundle was last refreshed from its trust
	// domain, as the server that gave it to the agent reported it
	// (SetBundleRefreshed), or else when this agent received its current
	// content (SetBundle). It is persisted with the bundle, so it keeps
	// its meaning across restarts: while the agent, its server or the
	// peer are cut off, the bundle's age (now - UpdatedAt) keeps growing.
	// Zero when unknown (a cache persisted by an earlier version, until
	// the next sync).
	UpdatedAt time.Time
}

// SetBundleRefreshed is SetBundle for a bundle that its trust domain's
// server last refreshed at refreshedAt (as our server reports it): that
// becomes its update time, whether or not its content changed, except
// that new content reported with a refresh time no newer than the previous
// content's is current as of now (the report lags the content). A
// refreshedAt after the cache clock's now (clock skew) counts as now; a
// zero one makes it SetBundle. Only a content change notifies
// subscribers; a new update time alone is persisted.
func (c *Cache) SetBundleRefreshed(b *spiffebundle.Bundle, refreshedAt time.Time) error {
	if b == nil {
		return errors.New("nil bundle")
	}
	td := b.TrustDomain()
	if td.IsZero() {
		return errors.New("bundle has no trust domain")
	}
	now := c.clk.Now()
	if refreshedAt.After(now) {
		refreshedAt = now
	}
	c.mu.Lock()
	if old, ok := c.bundles[td]; ok && old.bundle.Equal(b) {
		at := old.updatedAt
		switch {
		case !refreshedAt.IsZero():
			at = refreshedAt
		case at.IsZero():
			at = now
		}
		if at.Equal(old.updatedAt) {
			c.mu.Unlock()
			return nil
		}
		old.updatedAt = at
		c.mu.Unlock()
		if err := c.persist(); err != nil {
			c.log.Error("Failed to persist the agent cache", "dir", c.cfg.Dir, "error", err)
		}
		return nil
	}
	// New content: its reported refresh time, unless that is no newer
	// than the previous content's (the server's record lags the bundle it
	// serves, e.g. a bundle set by hand): then it is current as of now.
	at := refreshedAt
	if old, ok := c.bundles[td]; at.IsZero() || (ok && !at.After(old.updatedAt)) {
		at = now
	}
	c.bundles[td] = &bundleRecord{bundle: b.Clone(), gen: c.nextGen(), updatedAt: at}
	c.mu.Unlock()
	c.log.Debug("Bundle set", "trust_domain", td.String(), "updated_at", at)
	c.changed()
	return nil
}

// FederatedBundleUpdates returns the update time of every federated
// bundle the cache holds (not our own trust domain's), sorted by trust
// domain.
func (c *Cache) FederatedBundleUpdates() []BundleUpdate {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]BundleUpdate, 0, len(c.bundles))
	for td, r := range c.bundles {
		if td != c.cfg.TrustDomain {
			out = append(out, BundleUpdate{TrustDomain: td, UpdatedAt: r.updatedAt})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TrustDomain.Compare(out[j].TrustDomain) < 0 })
	return out
}
