package cache

import (
	"cmp"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// Entry is a registration entry as the agent sees it.
type Entry struct {
	ID             string                 `json:"id"`
	SPIFFEID       spiffeid.ID            `json:"spiffe_id"`
	ParentID       spiffeid.ID            `json:"parent_id"`
	Selectors      []selector.Selector    `json:"selectors"`
	DNSNames       []string               `json:"dns_names,omitempty"`
	FederatesWith  []spiffeid.TrustDomain `json:"federates_with,omitempty"`
	Hint           string                 `json:"hint,omitempty"`
	RevisionNumber int64                  `json:"revision_number"`
	X509SVIDTTL    time.Duration          `json:"x509_svid_ttl,omitempty"`
	JWTSVIDTTL     time.Duration          `json:"jwt_svid_ttl,omitempty"`
	Admin          bool                   `json:"admin,omitempty"`
	Downstream     bool                   `json:"downstream,omitempty"`
	CreatedAt      time.Time              `json:"created_at"`
}

func (e *Entry) clone() *Entry {
	c := *e
	c.Selectors = slices.Clone(e.Selectors)
	c.DNSNames = slices.Clone(e.DNSNames)
	c.FederatesWith = slices.Clone(e.FederatesWith)
	return &c
}

func (e *Entry) validate() error {
	if e == nil {
		return errors.New("nil entry")
	}
	if e.ID == "" {
		return errors.New("entry has no ID")
	}
	if e.SPIFFEID.IsZero() {
		return fmt.Errorf("entry %s has no SPIFFE ID", clip.Quote(e.ID))
	}
	if len(e.Selectors) == 0 {
		return fmt.Errorf("entry %s has no selectors", clip.Quote(e.ID))
	}
	for _, s := range e.Selectors {
		if err := s.Validate(); err != nil {
			return fmt.Errorf("entry %s: %w", clip.Quote(e.ID), err)
		}
	}
	return nil
}

func entriesEqual(a, b *Entry) bool {
	return a.ID == b.ID && a.SPIFFEID == b.SPIFFEID && a.ParentID == b.ParentID &&
		slices.Equal(a.Selectors, b.Selectors) && slices.Equal(a.DNSNames, b.DNSNames) &&
		slices.Equal(a.FederatesWith, b.FederatesWith) && a.Hint == b.Hint &&
		a.RevisionNumber == b.RevisionNumber && a.X509SVIDTTL == b.X509SVIDTTL &&
		a.JWTSVIDTTL == b.JWTSVIDTTL && a.Admin == b.Admin && a.Downstream == b.Downstream &&
		a.CreatedAt.Equal(b.CreatedAt)
}

// X509SVID is a signed certificate chain (leaf first) and its private key.
type X509SVID struct {
	Chain      []*x509.Certificate
	PrivateKey crypto.Signer
}

// Identity is an entry with the SVID the workload is served for it.
type Identity struct {
	Entry      *Entry
	SVID       []*x509.Certificate
	PrivateKey crypto.Signer
}

// WorkloadUpdate is the full state for one workload.
type WorkloadUpdate struct {
	// Entries are all entries matching the workload, in serving order,
	// whether or not an SVID is available for them yet.
	Entries []*Entry
	// Identities are the entries that have an unexpired SVID, same order.
	Identities []Identity
	// Bundle is the bundle of our trust domain; nil until one is set.
	Bundle *spiffebundle.Bundle
	// FederatedBundles holds the bundles, among those known, of the trust
	// domains the matching entries federate with.
	FederatedBundles map[spiffeid.TrustDomain]*spiffebundle.Bundle
}

// Config configures a Cache.
type Config struct {
	// Dir is the agent's data_dir. "" keeps the cache in memory only.
	Dir string
	// TrustDomain is the agent's trust domain (whose bundle is "ours").
	TrustDomain spiffeid.TrustDomain
	// Clock decides SVID expiry; nil is the real clock.
	Clock clock.Clock
	// Log; nil discards.
	Log *slog.Logger
	// MaxJWTSVIDs and MaxJWTSVIDsPerID bound the cached (and persisted)
	// JWT-SVIDs, in all and per SPIFFE ID; 0 means DefaultMaxJWTSVIDs and
	// DefaultMaxJWTSVIDsPerID.
	MaxJWTSVIDs, MaxJWTSVIDsPerID int
}

type entryRecord struct {
	entry *Entry
	gen   uint64
}

type svidRecord struct {
	chain    []*x509.Certificate
	key      crypto.Signer
	revision int64 // revision of the entry the SVID was set for
	gen      uint64
	// tainted: signed by an authority the server marked tainted
	// (TaintX509SVIDs): due for renewal now.
	tainted bool
}

func (s *svidRecord) notAfter() time.Time { return s.chain[0].NotAfter }

type bundleRecord struct {
	bundle *spiffebundle.Bundle
	gen    uint64
	// updatedAt is when the bundle was last known current (see
	// BundleUpdate); zero when unknown.
	updatedAt time.Time
}

// Cache is the agent's workload state. It is safe for concurrent use.
type Cache struct {
	cfg Config
	log *slog.Logger
	clk clock.Clock

	mu      sync.RWMutex
	gen     uint64
	entries map[string]*entryRecord
	svids   map[string]*svidRecord
	bundles map[spiffeid.TrustDomain]*bundleRecord
	subs    map[*Subscription]struct{}
	// watchers are the channels handed out by Watch.
	watchers map[chan struct{}]struct{}

	jwtMu       sync.Mutex
	jwts        map[jwtKey]*jwtRecord
	maxJWT      int
	maxJWTPerID int

	// kick wakes Run when SVIDs changed (its expiry timer may be stale).
	kick chan struct{}

	// revoked is set by Revoke and cleared by SetEntries (under mu).
	revoked bool

	persistMu sync.Mutex
}

// New returns an empty cache; call Load to restore persisted state.
func New(cfg Config) *Cache {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Cache{
		cfg:     cfg,
		log:     log,
		clk:     clock.OrReal(cfg.Clock),
		entries: make(map[string]*entryRecord),
		svids:   make(map[string]*svidRecord),
		bundles: make(map[spiffeid.TrustDomain]*bundleRecord),
		subs:    make(map[*Subscription]struct{}),
		jwts:    make(map[jwtKey]*jwtRecord),
		kick:    make(chan struct{}, 1),

		maxJWT:      cmp.Or(max(cfg.MaxJWTSVIDs, 0), DefaultMaxJWTSVIDs),
		maxJWTPerID: cmp.Or(max(cfg.MaxJWTSVIDsPerID, 0), DefaultMaxJWTSVIDsPerID),
	}
}

// TrustDomain returns the agent's trust domain.
func (c *Cache) TrustDomain() spiffeid.TrustDomain { return c.cfg.TrustDomain }

func (c *Cache) nextGen() uint64 {
	c.gen++
	return c.gen
}

// SetEntries replaces the set of authorized entries. Invalid entries (no
// ID, no SPIFFE ID, no or invalid selectors, duplicate ID) are skipped and
// reported in the returned error; the valid ones are applied regardless.
// SVIDs of removed entries, and of entries whose SPIFFE ID changed, are
// dropped. It ends a revocation (see Revoke): the server authorized this
// set.
func (c *Cache) SetEntries(entries []*Entry) error {
	var errs []error
	next := make(map[string]*Entry, len(entries))
	for _, e := range entries {
		if err := e.validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		if _, dup := next[e.ID]; dup {
			errs = append(errs, fmt.Errorf("duplicate entry ID %q", e.ID))
			continue
		}
		ce := e.clone()
		selector.Sort(ce.Selectors)
		next[e.ID] = ce
	}

	c.mu.Lock()
	changed := c.revoked
	c.revoked = false
	for id := range c.entries {
		if _, ok := next[id]; !ok {
			delete(c.entries, id)
			delete(c.svids, id)
			changed = true
			c.log.Debug("Entry removed", "entry_id", id)
		}
	}
	for id, e := range next {
		old, ok := c.entries[id]
		if ok && entriesEqual(old.entry, e) {
			continue
		}
		changed = true
		if ok && old.entry.SPIFFEID != e.SPIFFEID {
			delete(c.svids, id)
		}
		c.entries[id] = &entryRecord{entry: e, gen: c.nextGen()}
		if ok {
			c.log.Debug("Entry updated", "entry_id", id, "spiffe_id", e.SPIFFEID.String())
		} else {
			c.log.Debug("Entry added", "entry_id", id, "spiffe_id", e.SPIFFEID.String())
		}
	}
	var ids map[spiffeid.ID]struct{}
	if changed {
		ids = make(map[spiffeid.ID]struct{}, len(c.entries))
		for _, r := range c.entries {
			ids[r.entry.SPIFFEID] = struct{}{}
		}
	}
	c.mu.Unlock()

	if changed {
		c.dropJWTSVIDsExcept(ids)
		c.changed()
	}
	return errors.Join(errs...)
}

// Entries returns all entries, sorted by ID.
func (c *Cache) Entries() []*Entry {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]*Entry, 0, len(c.entries))
	for _, r := range c.entries {
		out = append(out, r.entry)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// SetX509SVIDs adds or replaces the SVIDs of the given entries (keyed by
// entry ID). SVIDs for unknown entries, with an empty chain, a leaf whose
// SPIFFE ID is not the entry's, or a key that does not match the leaf, are
// skipped and reported in the returned error; the rest are applied.
func (c *Cache) SetX509SVIDs(svids map[string]*X509SVID) error {
	var errs []error
	c.mu.Lock()
	changed := false
	for id, s := range svids {
		r, ok := c.entries[id]
		if !ok {
			errs = append(errs, fmt.Errorf("SVID for unknown entry %q", id))
			continue
		}
		if err := checkSVID(r.entry, s); err != nil {
			errs = append(errs, fmt.Errorf("SVID for entry %q: %w", id, err))
			continue
		}
		c.svids[id] = &svidRecord{
			chain:    slices.Clone(s.Chain),
			key:      s.PrivateKey,
			revision: r.entry.RevisionNumber,
			gen:      c.nextGen(),
		}
		changed = true
		c.log.Debug("X509-SVID set", "entry_id", id, "spiffe_id", r.entry.SPIFFEID.String(),
			"serial", s.Chain[0].SerialNumber.String(), "not_after", s.Chain[0].NotAfter)
	}
	c.mu.Unlock()
	if changed {
		c.changed()
	}
	return errors.Join(errs...)
}

func checkSVID(e *Entry, s *X509SVID) error {
	if s == nil || len(s.Chain) == 0 || s.Chain[0] == nil {
		return errors.New("empty certificate chain")
	}
	if s.PrivateKey == nil {
		return errors.New("no private key")
	}
	leaf := s.Chain[0]
	if len(leaf.URIs) != 1 {
		return fmt.Errorf("leaf has %d URI SANs, want 1", len(leaf.URIs))
	}
	id, err := spiffeid.FromURI(leaf.URIs[0])
	if err != nil {
		return fmt.Errorf("leaf URI SAN: %w", err)
	}
	if id != e.SPIFFEID {
		return fmt.Errorf("leaf is for %q, entry is %q", id, e.SPIFFEID)
	}
	if !publicKeysEqual(leaf.PublicKey, s.PrivateKey.Public()) {
		return errors.New("private key does not match the leaf certificate")
	}
	return nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

// X509SVID returns the unexpired SVID of an entry.
func (c *Cache) X509SVID(entryID string) (*X509SVID, bool) {
	now := c.clk.Now()
	c.mu.RLock()
	defer c.mu.RUnlock()
	s, ok := c.svids[entryID]
	if !ok || !now.Before(s.notAfter()) {
		return nil, false
	}
	return &X509SVID{Chain: s.chain, PrivateKey: s.key}, true
}

// RenewalPolicy reports whether an SVID valid from notBefore to notAfter
// should be replaced at now.
type RenewalPolicy func(now, notBefore, notAfter time.Time) bool

// DefaultRenewal renews at half-life, brought forward by a jitter of up to
// 10% of the lifetime. The jitter is derived from the validity period, so a
// given SVID always gets the same renewal point while SVIDs issued at
// different times spread their renewals.
func DefaultRenewal(now, notBefore, notAfter time.Time) bool {
	life := notAfter.Sub(notBefore)
	if life <= 0 {
		return true
	}
	renewAt := notBefore.Add(life/2 - time.Duration(float64(life)*jitterFrac(notBefore, notAfter)))
	return !now.Before(renewAt)
}

// NeedsSVID returns the entries, sorted by ID, that need a new X509-SVID
// at now: no SVID, an expired one, one issued for an older revision of the
// entry, or one that due (DefaultRenewal when nil) says to renew.
func (c *Cache) NeedsSVID(now time.Time, due RenewalPolicy) []*Entry {
	if due == nil {
		due = DefaultRenewal
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []*Entry
	for id, r := range c.entries {
		s, ok := c.svids[id]
		if !ok || !now.Before(s.notAfter()) || s.revision != r.entry.RevisionNumber || s.tainted ||
			due(now, s.chain[0].NotBefore, s.notAfter()) {
			out = append(out, r.entry)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// SetBundle adds or replaces the bundle of its trust domain (ours or a
// federated one). Setting an equal bundle is a no-op, except that a bundle
// whose update time is unknown (see BundleUpdate) is recorded as updated
// now; one whose content changed is recorded as updated now.
func (c *Cache) SetBundle(b *spiffebundle.Bundle) error {
	return c.SetBundleRefreshed(b, time.Time{})
}

// RemoveBundle forgets a federated bundle. Our own bundle cannot be removed.
func (c *Cache) RemoveBundle(td spiffeid.TrustDomain) error {
	if td == c.cfg.TrustDomain {
		return fmt.Errorf("refusing to remove the bundle of our own trust domain %q", td)
	}
	c.mu.Lock()
	_, ok := c.bundles[td]
	delete(c.bundles, td)
	c.mu.Unlock()
	if ok {
		c.log.Debug("Bundle removed", "trust_domain", td.String())
		c.changed()
	}
	return nil
}

// Bundle returns the bundle of a trust domain.
func (c *Cache) Bundle(td spiffeid.TrustDomain) (*spiffebundle.Bundle, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	r, ok := c.bundles[td]
	if !ok {
		return nil, false
	}
	return r.bundle, true
}

// Bundles returns every known bundle, ours and federated.
func (c *Cache) Bundles() map[spiffeid.TrustDomain]*spiffebundle.Bundle {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make(map[spiffeid.TrustDomain]*spiffebundle.Bundle, len(c.bundles))
	for td, r := range c.bundles {
		out[td] = r.bundle
	}
	return out
}

// lessForServing orders entries for a workload: hint-less first, then
// oldest, then by ID.
func lessForServing(a, b *Entry) bool {
	if (a.Hint == "") != (b.Hint == "") {
		return a.Hint == ""
	}
	if !a.CreatedAt.Equal(b.CreatedAt) {
		return a.CreatedAt.Before(b.CreatedAt)
	}
	return a.ID < b.ID
}

// matchingLocked returns matching entry records in serving order.
func (c *Cache) matchingLocked(set selector.Set) []*entryRecord {
	var out []*entryRecord
	if len(set) == 0 {
		return nil
	}
	for _, r := range c.entries {
		if set.ContainsAll(r.entry.Selectors) {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return lessForServing(out[i].entry, out[j].entry) })
	return out
}

// MatchingEntries returns the entries whose selectors are all in set, in
// serving order.
func (c *Cache) MatchingEntries(set selector.Set) []*Entry {
	c.mu.RLock()
	defer c.mu.RUnlock()
	recs := c.matchingLocked(set)
	out := make([]*Entry, len(recs))
	for i, r := range recs {
		out[i] = r.entry
	}
	return out
}

// FetchWorkloadUpdate returns the current full state for a workload.
func (c *Cache) FetchWorkloadUpdate(set selector.Set) *WorkloadUpdate {
	u, _ := c.buildUpdate(set, c.clk.Now())
	return u
}

// buildUpdate returns the state for set and a fingerprint that changes
// whenever anything in that state does.
func (c *Cache) buildUpdate(set selector.Set, now time.Time) (*WorkloadUpdate, string) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var fp strings.Builder
	recs := c.matchingLocked(set)
	u := &WorkloadUpdate{
		Entries:          make([]*Entry, 0, len(recs)),
		FederatedBundles: make(map[spiffeid.TrustDomain]*spiffebundle.Bundle),
	}
	fed := make(map[spiffeid.TrustDomain]struct{})
	for _, r := range recs {
		u.Entries = append(u.Entries, r.entry)
		fmt.Fprintf(&fp, "e%d", r.gen)
		if s, ok := c.svids[r.entry.ID]; ok && now.Before(s.notAfter()) {
			u.Identities = append(u.Identities, Identity{Entry: r.entry, SVID: s.chain, PrivateKey: s.key})
			fmt.Fprintf(&fp, "s%d", s.gen)
		}
		for _, td := range r.entry.FederatesWith {
			fed[td] = struct{}{}
		}
	}
	if b, ok := c.bundles[c.cfg.TrustDomain]; ok {
		u.Bundle = b.bundle
		fmt.Fprintf(&fp, "b%d", b.gen)
	}
	tds := make([]spiffeid.TrustDomain, 0, len(fed))
	for td := range fed {
		tds = append(tds, td)
	}
	sort.Slice(tds, func(i, j int) bool { return tds[i].Compare(tds[j]) < 0 })
	for _, td := range tds {
		if td == c.cfg.TrustDomain {
			continue
		}
		if b, ok := c.bundles[td]; ok {
			u.FederatedBundles[td] = b.bundle
			fmt.Fprintf(&fp, "f%s:%d", td, b.gen)
		}
	}
	return u, fp.String()
}

// changed notifies subscribers, persists and wakes Run.
func (c *Cache) changed() {
	c.notifyAll()
	if err := c.persist(); err != nil {
		c.log.Error("Failed to persist the agent cache", "dir", c.cfg.Dir, "error", err)
	}
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Run pushes updates to subscribers when a served SVID expires. It
// returns when ctx is done. Reads filter expired SVIDs whether or not Run
// is running; Run only makes open streams learn about it.
func (c *Cache) Run(ctx context.Context) error {
	// notified is the instant up to which expiries have been announced: an
	// SVID that expired after it (even while a kick, not the timer, woke
	// the loop) is announced on the next pass.
	notified := c.clk.Now()
	for {
		now := c.clk.Now()
		var next time.Time
		expired := false
		c.mu.RLock()
		for _, s := range c.svids {
			na := s.notAfter()
			if na.After(notified) && !na.After(now) {
				expired = true
			}
			if na.After(now) && (next.IsZero() || na.Before(next)) {
				next = na
			}
		}
		c.mu.RUnlock()
		if expired {
			c.notifyAll()
		}
		notified = now
		var timer <-chan time.Time
		if !next.IsZero() {
			timer = c.clk.After(next.Sub(now))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-c.kick:
		case <-timer:
		}
	}
}
