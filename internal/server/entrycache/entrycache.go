// Package entrycache keeps every registration entry and every attested node
// in memory, indexed for the questions asked on every agent RPC: may this
// agent still act as one (GetNode: its serials, banned state), and which
// entries is it authorized for (AuthorizedEntries, AuthorizedEntry)?
//
// # Authorization rule (SPIRE's)
//
// An agent with SPIFFE ID A is authorized for
//   - every entry whose parent is A;
//   - every entry whose parent is the SPIFFE ID of a node alias entry that
//     matches the agent: an entry whose parent is the server ID
//     (spiffe://<td>/spire/server) and whose selectors are all among A's
//     node selectors (the alias entries themselves are not returned);
//   - recursively, every entry whose parent is the SPIFFE ID of an entry
//     already authorized.
//
// Entries whose ExpiresAt is in the past are neither returned nor followed.
//
// # Freshness
//
// Load reads everything once. Afterwards the cache follows the store's entry
// and node journals (ListEntryEvents / ListNodeEvents): each event makes it
// re-read that entry or node. The store notifies, callers don't poke: a
// Store that implements ChangeNotifier (sqlstore does) calls Poke after
// every committed write that appended to a journal, before the write
// returns, and, on PostgreSQL, for the commits of other servers sharing the
// database (LISTEN/NOTIFY, see sqlstore.Store.Listen). Run applies new
// events on every Poke and every PollInterval, the fallback for
// notifications missed and for stores that cannot notify across processes
// (SQLite). Event IDs that are skipped (a transaction that committed later
// than a newer one, possible on PostgreSQL, whose sequences commit out of
// order) are re-checked on every application for GapTimeout (one read per
// run of nearby IDs); the late commit's own notification brings it. Load,
// which starts from the highest committed ID, also treats the IDs missing
// among the last LoadGapWindow below it as skipped: a write in flight while
// the cache loads (its ID lower, its commit later) is applied when it
// commits. When the Store also implements BundleJournal, a bundle write
// seen there (including one made by another server, in any commit order)
// wakes every subscriber, like BundleChanged.
//
// # Pruned journals
//
// Journals are pruned (the server's prune loop deletes events older than
// its retention). When the Store implements PrunedJournals, the cache
// checks the journals' horizons (every event ID up to one is gone) at
// least every PollInterval, and on every application while it waits for
// skipped IDs: a cache whose position was below a horizon, or that waits
// for a skipped ID at or below one, may have missed events that were
// pruned before it read them (a server stopped or cut off from the
// database for longer than the retention) and reloads in full instead.
// Load does not wait for IDs at or below the horizon.
//
// # Node consistency (the agent check)
//
// GetNode is read-your-writes for this server's node writes: every node
// create, update, delete or ban writes a node journal event in the same
// transaction, and the store pokes the cache after committing. Poke
// counts; a GetNode that finds pokes not yet covered by a node-journal
// application applies the journal itself (under the same lock as Run, so
// at most one store read for a burst of callers) before answering. So a
// ban or delete made through this server is effective for the very next
// RPC, with or without Run. Node writes made by other servers sharing the
// database are seen as soon as their notification arrives (then also by
// the next GetNode), else within PollInterval (plus one poll's duration),
// as SPIRE's agent authorization cache; until then an agent banned or
// deleted elsewhere may still be accepted here. A node missing from memory
// (attested an instant ago, possibly elsewhere) is read from the store,
// not cached. If a journal application fails, GetNode returns the error
// (callers fall back to the store) and retries on the next call.
//
// # Subscriptions
//
// Subscribe(agentID) returns a channel signalled (coalesced, buffer 1) when
// the agent's authorized set may have changed, or when any bundle changed
// (BundleChanged). Waking is targeted: the cache remembers, per subscribed
// agent, the SPIFFE IDs it was authorized to act as parent for at its last
// AuthorizedEntries call, and an entry change wakes only the agents for
// which the entry's old or new parent is in that set (alias entry changes
// wake the agents whose node selectors match the alias; node changes wake
// that agent). An agent with no recorded set is always woken. The entry
// changes of one journal application are matched against the subscribers
// in one pass (not one pass per change). False wakes are possible; missed
// wakes are not, provided the agent calls AuthorizedEntries after
// subscribing.
package entrycache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

const (
	defaultPollInterval = time.Second
	// GapTimeout is how long a skipped journal event ID is re-checked.
	GapTimeout = 5 * time.Minute
	// maxGaps bounds tracked skipped IDs per journal; beyond it the cache
	// reloads everything instead.
	maxGaps = 1000
	// LoadGapWindow is how far below the highest committed event ID Load
	// looks for IDs not committed yet (writes in flight: at most one ID
	// per event of the transactions open at that moment).
	LoadGapWindow = 500
	// gapReadSpan bounds the ID range of one read re-checking skipped IDs.
	gapReadSpan   = 2 * LoadGapWindow
	eventPageSize = 1000
	loadPageSize  = 1000
	serverPath    = "/spire/server"
)

// ErrNotLoaded is returned by queries made before the first Load.
var ErrNotLoaded = errors.New("entry cache not loaded")

// Store is the part of the datastore the cache reads. The entries and
// nodes it returns become the cache's (it may make their equal strings
// share memory): each call must return values of its own, as sqlstore's
// do.
type Store interface {
	ListEntries(ctx context.Context, f datastore.EntryFilter, p datastore.Page) ([]*datastore.Entry, string, error)
	GetEntry(ctx context.Context, id string) (*datastore.Entry, error)
	GetEntries(ctx context.Context, ids []string) (map[string]*datastore.Entry, error)
	ListEntryEvents(ctx context.Context, after int64, limit int) ([]datastore.EntryEvent, error)
	LastEntryEventID(ctx context.Context) (int64, error)
	GetNode(ctx context.Context, spiffeID string) (*datastore.AttestedNode, error)
	ListNodes(ctx context.Context, f datastore.NodeFilter, p datastore.Page) ([]*datastore.AttestedNode, string, error)
	ListNodeEvents(ctx context.Context, after int64, limit int) ([]datastore.NodeEvent, error)
	LastNodeEventID(ctx context.Context) (int64, error)
}

// ChangeNotifier is optionally implemented by the Store (sqlstore does):
// it calls fn after every committed write that appended to a journal,
// before the write returns, and for the commits of other servers it
// learns of (PostgreSQL notifications). New subscribes the cache (as
// Poke): the store notifies, callers don't poke.
type ChangeNotifier interface {
	OnChange(fn func(datastore.Change))
}

// PrunedJournals is optionally implemented by the Store (sqlstore does):
// how far each journal has been pruned.
type PrunedJournals interface {
	JournalHorizons(ctx context.Context) (datastore.JournalHorizons, error)
}

// BundleJournal is optionally implemented by the Store (sqlstore does):
// a new bundle event means a bundle changed, possibly on another server
// sharing the database, and every subscriber is woken.
type BundleJournal interface {
	LastBundleEventID(ctx context.Context) (int64, error)
	ListBundleEvents(ctx context.Context, after int64, limit int) ([]datastore.BundleEvent, error)
}

// Metrics receives the cache's measurements (internal/telemetry implements
// it).
type Metrics interface {
	// EntryCacheSynced is called after each successful application of the
	// journals, at at. When local writes were waiting (Poke), lag is how
	// long the oldest of them waited to be applied and pending is true.
	EntryCacheSynced(at time.Time, lag time.Duration, pending bool)
}

// Config configures a Cache.
type Config struct {
	Store Store
	Clock clock.Clock
	Log   *slog.Logger
	// Metrics is optional.
	Metrics Metrics
	// PollInterval is how often the journals are polled without a Poke
	// (default 1s). It bounds how late writes made by other servers that
	// share the database are seen.
	PollInterval time.Duration
	// BundleChanged, when set, is called (with no lock held) whenever the
	// cache wakes its subscribers for a bundle change: BundleChanged was
	// called, or the bundle journal moved (a bundle written here or by
	// another server).
	BundleChanged func()
}

// Cache is the in-memory entry and node-selector index. Safe for
// concurrent use. Entries it returns are shared: callers must not modify
// them.
type Cache struct {
	store    Store
	clk      clock.Clock
	log      *slog.Logger
	poll     time.Duration
	onBundle func()

	pokeCh chan struct{}
	// pokes counts Poke calls; nodePokes is the value of pokes read before
	// the last node-journal application that succeeded (monotonic, written
	// under applyMu). pokes > nodePokes means a local write may not be
	// applied yet: GetNode applies the node journal before answering.
	pokes     atomic.Uint64
	nodePokes atomic.Uint64
	// pokedAt is when the oldest Poke not yet covered by a Sync came, in
	// Unix nanoseconds of clk (0: none), for the apply lag metric.
	pokedAt atomic.Int64
	metrics Metrics

	// applyMu serializes Load and journal application.
	applyMu sync.Mutex

	mu           sync.RWMutex
	st           *state
	lastEntryEv  int64
	lastNodeEv   int64
	lastBundleEv int64
	entryGaps    map[int64]time.Time
	nodeGaps     map[int64]time.Time
	bundleGaps   map[int64]time.Time
	subMu        sync.Mutex
	subs         map[string]map[*subscriber]struct{}
	reach        map[string]map[string]struct{}

	// horizonAt is when the pruned horizons were last checked (the zero
	// time: at the next application). Guarded by applyMu.
	horizonAt time.Time
}

type subscriber struct{ ch chan struct{} }

type state struct {
	entries    map[string]*datastore.Entry
	byParent   map[string]entrySet
	bySPIFFEID map[string]entrySet
	aliasBySel map[selector.Selector]entrySet
	// nodes holds every attested node (private copies: selectors cloned).
	nodes map[string]*datastore.AttestedNode
}

// newState returns an empty state sized for about this many entries and
// nodes (most entries have a SPIFFE ID of their own; most parents are
// agents).
func newState(entries, nodes int) *state {
	return &state{
		entries:    make(map[string]*datastore.Entry, entries),
		byParent:   make(map[string]entrySet, nodes),
		bySPIFFEID: make(map[string]entrySet, entries),
		aliasBySel: make(map[selector.Selector]entrySet),
		nodes:      make(map[string]*datastore.AttestedNode, nodes),
	}
}

// New returns an empty cache; call Load (or Run, which loads first).
func New(cfg Config) *Cache {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	poll := cfg.PollInterval
	if poll <= 0 {
		poll = defaultPollInterval
	}
	c := &Cache{
		store:      cfg.Store,
		clk:        clock.OrReal(cfg.Clock),
		log:        log,
		poll:       poll,
		onBundle:   cfg.BundleChanged,
		pokeCh:     make(chan struct{}, 1),
		entryGaps:  make(map[int64]time.Time),
		nodeGaps:   make(map[int64]time.Time),
		bundleGaps: make(map[int64]time.Time),
		subs:       make(map[string]map[*subscriber]struct{}),
		reach:      make(map[string]map[string]struct{}),
		metrics:    cfg.Metrics,
	}
	if n, ok := cfg.Store.(ChangeNotifier); ok {
		n.OnChange(func(datastore.Change) { c.Poke() })
	}
	return c
}

// Load reads all entries and nodes and replaces the cache contents. It
// records the journal positions first, so writes racing with the load are
// applied afterwards by Sync/Run. Every subscriber is woken.
func (c *Cache) Load(ctx context.Context) error {
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	return c.loadLocked(ctx)
}

func (c *Cache) loadLocked(ctx context.Context) error {
	pokes := c.pokes.Load()
	lastE, err := c.store.LastEntryEventID(ctx)
	if err != nil {
		return fmt.Errorf("entry cache: reading entry journal position: %w", err)
	}
	lastN, err := c.store.LastNodeEventID(ctx)
	if err != nil {
		return fmt.Errorf("entry cache: reading node journal position: %w", err)
	}
	var lastB int64
	var bundleGaps []int64
	bj, hasBJ := c.store.(BundleJournal)
	if hasBJ {
		if lastB, err = bj.LastBundleEventID(ctx); err != nil {
			return fmt.Errorf("entry cache: reading bundle journal position: %w", err)
		}
	}
	// IDs at or below a horizon are pruned, not in flight.
	var h datastore.JournalHorizons
	if pj, ok := c.store.(PrunedJournals); ok {
		if h, err = pj.JournalHorizons(ctx); err != nil {
			return fmt.Errorf("entry cache: reading the journals' pruned horizons: %w", err)
		}
	}
	// Before reading the entries and nodes: an ID missing now may commit
	// any time after, and is then applied as a found gap (one that commits
	// before the listings below is applied twice, harmlessly).
	entryGaps, err := missingBelow(ctx, h.Entry, lastE, c.store.ListEntryEvents, func(ev datastore.EntryEvent) int64 { return ev.ID })
	if err != nil {
		return fmt.Errorf("entry cache: reading the entry journal: %w", err)
	}
	nodeGaps, err := missingBelow(ctx, h.Node, lastN, c.store.ListNodeEvents, func(ev datastore.NodeEvent) int64 { return ev.ID })
	if err != nil {
		return fmt.Errorf("entry cache: reading the node journal: %w", err)
	}
	if hasBJ {
		if bundleGaps, err = missingBelow(ctx, h.Bundle, lastB, bj.ListBundleEvents, func(ev datastore.BundleEvent) int64 { return ev.ID }); err != nil {
			return fmt.Errorf("entry cache: reading the bundle journal: %w", err)
		}
	}
	st := newState(c.sizeHint(ctx))
	err = listAll(ctx, func(ctx context.Context, token string) ([]*datastore.Entry, string, error) {
		return c.store.ListEntries(ctx, datastore.EntryFilter{}, datastore.Page{Size: loadPageSize, Token: token})
	}, st.putEntry)
	if err != nil {
		return fmt.Errorf("entry cache: listing entries: %w", err)
	}
	err = listAll(ctx, func(ctx context.Context, token string) ([]*datastore.AttestedNode, string, error) {
		return c.store.ListNodes(ctx, datastore.NodeFilter{}, datastore.Page{Size: loadPageSize, Token: token})
	}, func(n *datastore.AttestedNode) { st.nodes[n.SPIFFEID] = cloneNode(n) })
	if err != nil {
		return fmt.Errorf("entry cache: listing nodes: %w", err)
	}
	c.mu.Lock()
	c.st = st
	c.lastEntryEv, c.lastNodeEv, c.lastBundleEv = lastE, lastN, lastB
	now := c.clk.Now()
	resetGaps(c.entryGaps, entryGaps, now)
	resetGaps(c.nodeGaps, nodeGaps, now)
	resetGaps(c.bundleGaps, bundleGaps, now)
	c.mu.Unlock()
	c.nodePokes.Store(pokes)
	c.log.Debug("entry cache loaded", "entries", len(st.entries), "nodes", len(st.nodes))
	c.wakeAll()
	return nil
}

// listAll calls add for every item of a paged listing, in order. The next
// page is read (by a goroutine that ends before listAll returns) while add
// indexes the previous one: reading (decoding rows) and indexing take
// about as long each, and a load is the server's start-up.
func listAll[T any](ctx context.Context, list func(ctx context.Context, token string) ([]T, string, error), add func(T)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pages := make(chan []T, 1)
	var listErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(pages)
		token := ""
		for {
			items, next, err := list(ctx, token)
			if err != nil {
				listErr = err
				return
			}
			select {
			case pages <- items:
			case <-ctx.Done():
				listErr = ctx.Err()
				return
			}
			if next == "" || len(items) == 0 {
				return
			}
			token = next
		}
	}()
	for items := range pages {
		for _, it := range items {
			add(it)
		}
	}
	<-done
	return listErr
}

// sizeHint is how many entries and nodes a load should size its maps for:
// the current state's counts on a reload, else the store's counts when it
// can tell them (sqlstore can, by an index scan), else 0. Growing maps of
// a million keys step by step cost about a tenth of a load.
func (c *Cache) sizeHint(ctx context.Context) (entries, nodes int) {
	c.mu.RLock()
	st := c.st
	c.mu.RUnlock()
	if st != nil {
		return len(st.entries), len(st.nodes)
	}
	counter, ok := c.store.(interface {
		CountEntries(ctx context.Context, f datastore.EntryFilter) (int, error)
		CountNodes(ctx context.Context, f datastore.NodeFilter) (int, error)
	})
	if !ok {
		return 0, 0
	}
	// Errors only lose the hint: the listing that follows reports them.
	entries, _ = counter.CountEntries(ctx, datastore.EntryFilter{})
	nodes, _ = counter.CountNodes(ctx, datastore.NodeFilter{})
	return max(entries, 0), max(nodes, 0)
}

// resetGaps makes ids, skipped as of now, the only tracked gaps.
func resetGaps(gaps map[int64]time.Time, ids []int64, now time.Time) {
	clear(gaps)
	for _, id := range ids {
		gaps[id] = now
	}
}

// missingBelow lists the IDs in (last-LoadGapWindow, last] above the
// pruned horizon that have no event (yet).
func missingBelow[E any](ctx context.Context, horizon, last int64,
	list func(ctx context.Context, after int64, limit int) ([]E, error), id func(E) int64) ([]int64, error) {
	from := max(0, horizon, last-LoadGapWindow)
	if from >= last {
		return nil, nil
	}
	evs, err := list(ctx, from, int(last-from))
	if err != nil {
		return nil, err
	}
	present := make(map[int64]bool, len(evs))
	for _, ev := range evs {
		present[id(ev)] = true
	}
	var out []int64
	for g := from + 1; g <= last; g++ {
		if !present[g] {
			out = append(out, g)
		}
	}
	return out, nil
}

// Run loads the cache if needed, then applies journal events on every Poke
// and every PollInterval until ctx ends. Failures to poll are logged and
// retried on the next tick.
func (c *Cache) Run(ctx context.Context) error {
	c.mu.RLock()
	loaded := c.st != nil
	c.mu.RUnlock()
	if !loaded {
		if err := c.Load(ctx); err != nil {
			return err
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.pokeCh:
		case <-c.clk.After(c.poll):
		}
		if err := c.Sync(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("entry cache: applying journal events failed", "error", err)
		}
	}
}

// Poke tells the cache that the journals moved (the store calls it after
// every committed journal write, see ChangeNotifier; a caller that finds
// the cache behind may too): Run applies new journal events now, and the
// next GetNode applies the node journal itself first if Run has not yet.
// It never blocks.
func (c *Cache) Poke() {
	c.pokedAt.CompareAndSwap(0, c.clk.Now().UnixNano())
	c.pokes.Add(1)
	select {
	case c.pokeCh <- struct{}{}:
	default:
	}
}

// BundleChanged wakes every subscriber (our or a federated bundle changed).
func (c *Cache) BundleChanged() {
	c.wakeAll()
	if c.onBundle != nil {
		c.onBundle()
	}
}

// Sync applies every journal event not yet applied, synchronously. Run
// calls it; tests and callers needing read-your-writes may too.
func (c *Cache) Sync(ctx context.Context) error {
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	pokedAt := c.pokedAt.Load()
	pokes := c.pokes.Load()
	if err := c.sync(ctx, pokes); err != nil {
		return err
	}
	if c.metrics == nil {
		return nil
	}
	now := c.clk.Now()
	var lag time.Duration
	if pokedAt != 0 {
		lag = now.Sub(time.Unix(0, pokedAt))
		// Pokes that came during this sync may not be covered: keep the
		// time for the next one (the lag reported then is an upper bound).
		if c.pokes.Load() == pokes {
			c.pokedAt.CompareAndSwap(pokedAt, 0)
		}
	}
	c.metrics.EntryCacheSynced(now, lag, pokedAt != 0)
	return nil
}

// sync is Sync's work, with applyMu held; pokes is the Poke count read
// before it started.
func (c *Cache) sync(ctx context.Context, pokes uint64) error {
	c.mu.RLock()
	loaded := c.st != nil
	c.mu.RUnlock()
	if !loaded {
		return c.loadLocked(ctx)
	}
	c.mu.RLock()
	before := positions{c.lastEntryEv, c.lastNodeEv, c.lastBundleEv}
	c.mu.RUnlock()
	if err := c.syncEntries(ctx); err != nil {
		if errors.Is(err, errReload) {
			c.log.Warn("entry cache: too many skipped entry events, reloading")
			return c.loadLocked(ctx)
		}
		return err
	}
	if err := c.syncNodes(ctx); err != nil {
		if errors.Is(err, errReload) {
			c.log.Warn("entry cache: too many skipped node events, reloading")
			return c.loadLocked(ctx)
		}
		return err
	}
	c.nodePokes.Store(pokes)
	if err := c.syncBundles(ctx); err != nil {
		return err
	}
	return c.checkHorizons(ctx, before)
}

// positions are the cache's journal positions.
type positions struct{ entry, node, bundle int64 }

// checkHorizons reloads the cache when journal events it had not applied
// may have been pruned before it read them: a journal's pruned horizon
// above the position its last read started from (before), or at or above
// a skipped ID it still waits for. It reads the horizons while skipped
// IDs are tracked, and otherwise once per PollInterval (a cache that fell
// behind and finds no newer event). Called with applyMu held, after the
// journals were read.
func (c *Cache) checkHorizons(ctx context.Context, before positions) error {
	pj, ok := c.store.(PrunedJournals)
	if !ok {
		return nil
	}
	_, hasBJ := c.store.(BundleJournal)
	now := c.clk.Now()
	c.mu.RLock()
	waiting := len(c.entryGaps) > 0 || len(c.nodeGaps) > 0 || len(c.bundleGaps) > 0
	c.mu.RUnlock()
	if !waiting && !c.horizonAt.IsZero() && now.Sub(c.horizonAt) < c.poll {
		return nil
	}
	h, err := pj.JournalHorizons(ctx)
	if err != nil {
		return fmt.Errorf("entry cache: reading the journals' pruned horizons: %w", err)
	}
	c.horizonAt = now
	c.mu.RLock()
	entries := before.entry < h.Entry || gapAtOrBelow(c.entryGaps, h.Entry)
	nodes := before.node < h.Node || gapAtOrBelow(c.nodeGaps, h.Node)
	bundles := hasBJ && (before.bundle < h.Bundle || gapAtOrBelow(c.bundleGaps, h.Bundle))
	c.mu.RUnlock()
	if !entries && !nodes && !bundles {
		return nil
	}
	c.log.Warn("entry cache: journal events not applied yet were pruned (this server fell behind by more than the retention); reloading",
		"entry_position", before.entry, "entry_horizon", h.Entry, "node_position", before.node, "node_horizon", h.Node,
		"bundle_position", before.bundle, "bundle_horizon", h.Bundle)
	if err := c.loadLocked(ctx); err != nil {
		return err
	}
	if bundles {
		c.BundleChanged()
	}
	return nil
}

// gapAtOrBelow reports whether a skipped ID in gaps is at or below
// horizon. Called with mu held.
func gapAtOrBelow(gaps map[int64]time.Time, horizon int64) bool {
	for g := range gaps {
		if g <= horizon {
			return true
		}
	}
	return false
}

// syncNodesAfterPoke applies the node journal unless an application that
// started after the Poke numbered want has already succeeded: the
// read-your-writes path of GetNode.
func (c *Cache) syncNodesAfterPoke(ctx context.Context, want uint64) error {
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	if c.nodePokes.Load() >= want {
		return nil // Run (or another caller) got there while we waited
	}
	pokes := c.pokes.Load()
	c.mu.RLock()
	loaded := c.st != nil
	c.mu.RUnlock()
	if !loaded {
		return ErrNotLoaded
	}
	if err := c.syncNodes(ctx); err != nil {
		if errors.Is(err, errReload) {
			c.log.Warn("entry cache: too many skipped node events, reloading")
			return c.loadLocked(ctx)
		}
		return err
	}
	c.nodePokes.Store(pokes)
	return nil
}

// syncBundles wakes everyone when the bundle journal has new events
// (written here or by another server), skipped IDs that appeared included.
// Called with applyMu held.
func (c *Cache) syncBundles(ctx context.Context) error {
	bj, ok := c.store.(BundleJournal)
	if !ok {
		return nil
	}
	c.mu.RLock()
	from := c.lastBundleEv
	skipped := gapIDs(c.bundleGaps)
	c.mu.RUnlock()
	// The bundles themselves are read by whoever is woken.
	r, err := readJournal(ctx, "bundle", from, skipped, bj.ListBundleEvents,
		func(ev datastore.BundleEvent) (int64, string) { return ev.ID, ev.TrustDomain },
		func(_ context.Context, tds []string) (map[string]struct{}, error) { return nil, nil })
	if errors.Is(err, errReload) {
		// Too many skipped IDs to track: start again from the top.
		last, lerr := bj.LastBundleEventID(ctx)
		if lerr != nil {
			return fmt.Errorf("entry cache: reading bundle journal position: %w", lerr)
		}
		c.mu.Lock()
		c.lastBundleEv = last
		clear(c.bundleGaps)
		c.mu.Unlock()
		c.BundleChanged()
		return nil
	}
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.lastBundleEv = r.last
	tooMany := r.updateGaps(c.bundleGaps, c.clk.Now())
	if tooMany {
		clear(c.bundleGaps)
	}
	c.mu.Unlock()
	if len(r.updates) > 0 || tooMany {
		c.BundleChanged()
	}
	return nil
}

var errReload = errors.New("reload needed")

// journalUpdate is the current state of one entry or node a journal event
// named: the zero T when it no longer exists.
type journalUpdate[T any] struct {
	id  string
	val T
}

// journalRead is what readJournal found past a journal position.
type journalRead[T any] struct {
	updates   []journalUpdate[T] // one per ID named, in event order
	last      int64              // the new position
	newGaps   []int64            // event IDs skipped by this read
	foundGaps []int64            // previously skipped IDs that have appeared
}

// readJournal follows one event journal (entries or nodes, named by kind in
// messages): it re-checks the skipped IDs in gaps, then reads the events
// after last, page by page, and reads the current state of each ID they
// name, once, in one batch per page. list reads events after a position,
// event gives an event's ID and the entry or node ID it names, getMany
// reads those entries or nodes (an ID absent from the result was deleted).
// It returns errReload when more IDs were skipped than are tracked.
func readJournal[E, T any](ctx context.Context, kind string, last int64, gaps []int64,
	list func(ctx context.Context, after int64, limit int) ([]E, error),
	event func(E) (int64, string),
	getMany func(ctx context.Context, ids []string) (map[string]T, error)) (journalRead[T], error) {
	r := journalRead[T]{last: last}
	seen := make(map[string]struct{})
	var pending []string
	// want queues an ID; re-reading the same ID twice in one read is
	// pointless: the read returns the current state.
	want := func(id string) {
		if _, ok := seen[id]; !ok {
			seen[id] = struct{}{}
			pending = append(pending, id)
		}
	}
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		vals, err := getMany(ctx, pending)
		if err != nil {
			return fmt.Errorf("entry cache: reading %d %ss: %w", len(pending), kind, err)
		}
		for _, id := range pending {
			r.updates = append(r.updates, journalUpdate[T]{id: id, val: vals[id]})
		}
		pending = pending[:0]
		return nil
	}
	// Re-check skipped IDs first: one read per run of nearby IDs (those
	// Load marks are within LoadGapWindow of each other; a lone old gap
	// costs a one-row read, not a read of every event since).
	sorted := slices.Sorted(slices.Values(gaps))
	for len(sorted) > 0 {
		n := 1
		for n < len(sorted) && sorted[n]-sorted[0] < gapReadSpan {
			n++
		}
		run := sorted[:n]
		sorted = sorted[n:]
		lo, hi := run[0], run[len(run)-1]
		evs, err := list(ctx, lo-1, int(hi-lo+1))
		if err != nil {
			return r, fmt.Errorf("entry cache: re-reading %d skipped %s events: %w", len(run), kind, err)
		}
		for _, ev := range evs {
			if evID, id := event(ev); evID <= hi && slices.Contains(run, evID) {
				want(id)
				r.foundGaps = append(r.foundGaps, evID)
			}
		}
	}
	for {
		evs, err := list(ctx, r.last, eventPageSize)
		if err != nil {
			return r, fmt.Errorf("entry cache: listing %s events after %d: %w", kind, r.last, err)
		}
		for _, ev := range evs {
			evID, id := event(ev)
			if evID <= r.last {
				continue
			}
			if evID > r.last+1 {
				if evID-r.last-1 > maxGaps {
					return r, errReload
				}
				for g := r.last + 1; g < evID; g++ {
					r.newGaps = append(r.newGaps, g)
				}
			}
			want(id)
			r.last = evID
		}
		if err := flush(); err != nil {
			return r, err
		}
		if len(evs) < eventPageSize {
			break
		}
	}
	return r, nil
}

// oneByOne adapts a single-item getter (datastore.ErrNotFound meaning
// deleted) to readJournal's batch getter.
func oneByOne[T any](get func(ctx context.Context, id string) (T, error)) func(context.Context, []string) (map[string]T, error) {
	return func(ctx context.Context, ids []string) (map[string]T, error) {
		out := make(map[string]T, len(ids))
		for _, id := range ids {
			v, err := get(ctx, id)
			switch {
			case errors.Is(err, datastore.ErrNotFound):
			case err != nil:
				return nil, fmt.Errorf("%q: %w", id, err)
			default:
				out[id] = v
			}
		}
		return out, nil
	}
}

// gapIDs lists the skipped event IDs being re-checked. Called with mu held.
func gapIDs(gaps map[int64]time.Time) []int64 {
	out := make([]int64, 0, len(gaps))
	for id := range gaps {
		out = append(out, id)
	}
	return out
}

// updateGaps records the read's found and new gaps in gaps, forgets the
// gaps older than GapTimeout, and reports whether more are tracked than
// allowed. Called with mu held.
func (r *journalRead[T]) updateGaps(gaps map[int64]time.Time, now time.Time) (tooMany bool) {
	for _, g := range r.foundGaps {
		delete(gaps, g)
	}
	for _, g := range r.newGaps {
		gaps[g] = now
	}
	for g, t := range gaps {
		if now.Sub(t) > GapTimeout {
			delete(gaps, g)
		}
	}
	return len(gaps) > maxGaps
}

// followJournal brings the cache up to date with one journal: it reads
// past *last (re-checking the skipped IDs in gaps) with readJournal, then,
// under the write lock, applies each update with apply (which adds the
// agents to wake), calls finish (when not nil: it adds the agents to wake
// for the whole batch), moves *last and updates gaps, and wakes the
// agents. Called with applyMu held; *last and gaps are guarded by mu.
func followJournal[E, T any](ctx context.Context, c *Cache, kind string, last *int64, gaps map[int64]time.Time,
	list func(ctx context.Context, after int64, limit int) ([]E, error),
	event func(E) (int64, string),
	getMany func(ctx context.Context, ids []string) (map[string]T, error),
	apply func(u journalUpdate[T], wake map[string]struct{}),
	finish func(wake map[string]struct{})) error {
	c.mu.RLock()
	from := *last
	skipped := gapIDs(gaps)
	c.mu.RUnlock()

	r, err := readJournal(ctx, kind, from, skipped, list, event, getMany)
	if err != nil {
		return err
	}

	now := c.clk.Now()
	c.mu.Lock()
	wake := make(map[string]struct{})
	for _, u := range r.updates {
		apply(u, wake)
	}
	if finish != nil {
		finish(wake)
	}
	*last = r.last
	tooMany := r.updateGaps(gaps, now)
	c.mu.Unlock()
	c.wake(wake)
	if tooMany {
		return errReload
	}
	return nil
}

// syncEntries reads new entry events and the entries they name, then
// applies them under the write lock. The agents to wake are found in one
// pass over the subscribers for the whole batch (collectEntryWakes).
// Called with applyMu held.
func (c *Cache) syncEntries(ctx context.Context) error {
	var ch entryChanges
	return followJournal(ctx, c, "entry", &c.lastEntryEv, c.entryGaps, c.store.ListEntryEvents,
		func(ev datastore.EntryEvent) (int64, string) { return ev.ID, ev.EntryID }, c.store.GetEntries,
		func(u journalUpdate[*datastore.Entry], _ map[string]struct{}) {
			old := c.st.entries[u.id]
			if old != nil {
				c.st.removeEntry(old)
			}
			if u.val != nil {
				c.st.putEntry(u.val)
			}
			ch.add(old)
			ch.add(u.val)
		},
		func(wake map[string]struct{}) { c.collectEntryWakes(wake, &ch) })
}

// syncNodes reads new node events and the nodes they name, then applies
// them under the write lock. Called with applyMu held.
func (c *Cache) syncNodes(ctx context.Context) error {
	return followJournal(ctx, c, "node", &c.lastNodeEv, c.nodeGaps, c.store.ListNodeEvents,
		func(ev datastore.NodeEvent) (int64, string) { return ev.ID, ev.SPIFFEID }, oneByOne(c.store.GetNode),
		func(u journalUpdate[*datastore.AttestedNode], wake map[string]struct{}) {
			if u.val == nil {
				delete(c.st.nodes, u.id)
			} else {
				c.st.nodes[u.id] = cloneNode(u.val)
			}
			wake[u.id] = struct{}{}
		}, nil)
}

// entryChanges is what a batch of entry changes may affect: the parent IDs
// of the old and new versions of every changed entry, and the changed
// versions that are node alias entries.
type entryChanges struct {
	parents map[string]struct{}
	aliases []*datastore.Entry
}

// add records e, one version (old or new, nil: none) of a changed entry.
func (ch *entryChanges) add(e *datastore.Entry) {
	if e == nil {
		return
	}
	if ch.parents == nil {
		ch.parents = make(map[string]struct{})
	}
	ch.parents[e.ParentID] = struct{}{}
	if isAlias(e) {
		ch.aliases = append(ch.aliases, e)
	}
}

// collectEntryWakes adds to wake the subscribed agents whose authorized set
// may change because of the batch of entry changes ch: the agents with no
// recorded reach, those whose reach holds the parent of a changed entry's
// old or new version, and those whose node selectors match a changed alias
// entry. One pass over the subscribers for the whole batch, no per-agent
// memory beyond the reach. Called with c.mu held for writing.
func (c *Cache) collectEntryWakes(wake map[string]struct{}, ch *entryChanges) {
	if len(ch.parents) == 0 {
		return
	}
	c.subMu.Lock()
	defer c.subMu.Unlock()
	for agent := range c.subs {
		if _, ok := wake[agent]; ok {
			continue
		}
		r, ok := c.reach[agent]
		if !ok || intersects(r, ch.parents) {
			wake[agent] = struct{}{}
			continue
		}
		if len(ch.aliases) == 0 {
			continue
		}
		sels := c.st.nodeSelectors(agent)
		if len(sels) == 0 {
			continue // matches no alias entry
		}
		nodeSet := selector.NewSet(sels...)
		for _, e := range ch.aliases {
			if nodeSet.ContainsAll(e.Selectors) {
				wake[agent] = struct{}{}
				break
			}
		}
	}
}

// intersects reports whether a and b share a key, iterating the smaller.
func intersects(a, b map[string]struct{}) bool {
	if len(a) > len(b) {
		a, b = b, a
	}
	for k := range a {
		if _, ok := b[k]; ok {
			return true
		}
	}
	return false
}

func isAlias(e *datastore.Entry) bool {
	rest, ok := strings.CutPrefix(e.ParentID, "spiffe://")
	if !ok {
		return false
	}
	i := strings.IndexByte(rest, '/')
	return i >= 0 && rest[i:] == serverPath
}

// putEntry adds e (an entry of the cache's own: see Store) to the
// indexes. Its ParentID is made to share the memory of its siblings'
// (an agent's entries name it as parent, each in a string of its own
// when read from the store).
func (st *state) putEntry(e *datastore.Entry) {
	st.entries[e.ID] = e
	siblings := st.byParent[e.ParentID]
	if sib := siblings.any(); sib != nil {
		e.ParentID = sib.ParentID
	}
	siblings.put(e)
	st.byParent[e.ParentID] = siblings
	addIdx(st.bySPIFFEID, e.SPIFFEID, e)
	if isAlias(e) {
		for _, s := range e.Selectors {
			addIdx(st.aliasBySel, s, e)
		}
	}
}

func (st *state) removeEntry(e *datastore.Entry) {
	delete(st.entries, e.ID)
	delIdx(st.byParent, e.ParentID, e.ID)
	delIdx(st.bySPIFFEID, e.SPIFFEID, e.ID)
	if isAlias(e) {
		for _, s := range e.Selectors {
			delIdx(st.aliasBySel, s, e.ID)
		}
	}
}

// AuthorizedEntries returns the entries agentID is authorized for, sorted
// by entry ID. The returned entries are shared and must not be modified.
func (c *Cache) AuthorizedEntries(ctx context.Context, agentID spiffeid.ID) ([]*datastore.Entry, error) {
	agent := agentID.String()
	sels, known, err := c.uncachedSelectors(ctx, agent)
	if err != nil {
		return nil, err
	}

	c.mu.RLock()
	defer c.mu.RUnlock()
	st := c.st
	if known {
		sels = st.nodeSelectors(agent)
	}
	now := c.clk.Now().Unix()

	visited := map[string]struct{}{agent: {}}
	queue := []string{agent}
	if len(sels) > 0 {
		nodeSet := selector.NewSet(sels...)
		checked := make(map[string]struct{})
		for _, s := range sels {
			for e := range st.aliasBySel[s].all() {
				if _, ok := checked[e.ID]; ok {
					continue
				}
				checked[e.ID] = struct{}{}
				if !live(e, now) || !nodeSet.ContainsAll(e.Selectors) {
					continue
				}
				if _, ok := visited[e.SPIFFEID]; !ok {
					visited[e.SPIFFEID] = struct{}{}
					queue = append(queue, e.SPIFFEID)
				}
			}
		}
	}
	var out []*datastore.Entry
	for i := 0; i < len(queue); i++ {
		for e := range st.byParent[queue[i]].all() {
			if !live(e, now) {
				continue
			}
			out = append(out, e)
			if _, ok := visited[e.SPIFFEID]; !ok {
				visited[e.SPIFFEID] = struct{}{}
				queue = append(queue, e.SPIFFEID)
			}
		}
	}
	slices.SortFunc(out, func(a, b *datastore.Entry) int { return strings.Compare(a.ID, b.ID) })

	c.subMu.Lock()
	if _, ok := c.subs[agent]; ok {
		c.reach[agent] = visited
	}
	c.subMu.Unlock()
	return out, nil
}

// uncachedSelectors reports whether agent's node is cached (then the caller
// reads its selectors under mu) and, when it is not, reads its selectors
// from the store: the node may have attested an instant ago and its journal
// event not been applied yet. The store's answer is not cached, so a racing
// delete can't be undone. A node that does not exist has no selectors.
func (c *Cache) uncachedSelectors(ctx context.Context, agent string) (sels []selector.Selector, known bool, err error) {
	c.mu.RLock()
	if c.st == nil {
		c.mu.RUnlock()
		return nil, false, ErrNotLoaded
	}
	_, known = c.st.nodes[agent]
	c.mu.RUnlock()
	if known {
		return nil, true, nil
	}
	n, err := c.store.GetNode(ctx, agent)
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return nil, false, nil
	case err != nil:
		return nil, false, fmt.Errorf("entry cache: reading node %q: %w", agent, err)
	}
	return n.Selectors, false, nil
}

// nodeSelectors returns the cached selectors of a node (nil when unknown).
// Called with mu held.
func (st *state) nodeSelectors(id string) []selector.Selector {
	if n := st.nodes[id]; n != nil {
		return n.Selectors
	}
	return nil
}

// AuthorizedEntry returns the entry with ID entryID when agentID is
// authorized for it (the rule of AuthorizedEntries, exactly), and nil, nil
// when the entry does not exist, has expired or is not authorized. It
// answers one question without computing the whole authorized set: it walks
// from the entry's parent towards the agent (or a node alias matching it),
// usually one step. The entry is shared and must not be modified. Unlike
// AuthorizedEntries it does not record the agent's reach for targeted wakes.
func (c *Cache) AuthorizedEntry(ctx context.Context, agentID spiffeid.ID, entryID string) (*datastore.Entry, error) {
	agent := agentID.String()
	sels, known, err := c.uncachedSelectors(ctx, agent)
	if err != nil {
		return nil, err
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	st := c.st
	if known {
		sels = st.nodeSelectors(agent)
	}
	now := c.clk.Now().Unix()
	e := st.entries[entryID]
	if e == nil || !live(e, now) || !st.reaches(agent, sels, e.ParentID, now) {
		return nil, nil
	}
	return e, nil
}

func live(e *datastore.Entry, now int64) bool { return e.ExpiresAt == 0 || e.ExpiresAt > now }

// reaches reports whether AuthorizedEntries(agent) would visit target, i.e.
// return the entries parented to it. The forward walk starts from the agent
// and the SPIFFE IDs of the live alias entries whose selectors (at least
// one) are all among sels, and goes from a visited ID P to the SPIFFE ID
// of every live entry parented to P. This walks the same edges backwards:
// from target to the parents of the live entries whose SPIFFE ID it is,
// until it meets a starting point. Called with mu held.
func (st *state) reaches(agent string, sels []selector.Selector, target string, now int64) bool {
	var nodeSet selector.Set
	haveSet := false
	visited := map[string]struct{}{target: {}}
	stack := []string{target}
	for len(stack) > 0 {
		id := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if id == agent {
			return true
		}
		for e := range st.bySPIFFEID[id].all() {
			if !live(e, now) {
				continue
			}
			if len(sels) > 0 && len(e.Selectors) > 0 && isAlias(e) {
				if !haveSet {
					nodeSet, haveSet = selector.NewSet(sels...), true
				}
				if nodeSet.ContainsAll(e.Selectors) {
					return true
				}
			}
			if _, ok := visited[e.ParentID]; !ok {
				visited[e.ParentID] = struct{}{}
				stack = append(stack, e.ParentID)
			}
		}
	}
	return false
}

// GetNode returns the attested node spiffeID from memory: a copy the caller
// may keep (its Selectors are shared and must not be modified). A node not
// in memory is read from the store (and not cached); datastore.ErrNotFound
// when it does not exist there either. ErrNotLoaded before the first Load.
//
// Consistency: a write made on this server (the store pokes the cache
// before the write returns) is seen by every GetNode that starts after the
// write returned: when Run has not applied it yet, GetNode applies the node
// journal itself before answering. Writes made by other servers sharing
// the database are seen once their notification arrives (PostgreSQL), else
// within PollInterval (plus the time of one poll), as SPIRE's agent
// authorization cache; a node attested on another server is found at once
// through the store read on a miss.
func (c *Cache) GetNode(ctx context.Context, spiffeID string) (*datastore.AttestedNode, error) {
	if want := c.pokes.Load(); want > c.nodePokes.Load() {
		if err := c.syncNodesAfterPoke(ctx, want); err != nil {
			return nil, fmt.Errorf("entry cache: applying node journal: %w", err)
		}
	}
	c.mu.RLock()
	if c.st == nil {
		c.mu.RUnlock()
		return nil, ErrNotLoaded
	}
	n := c.st.nodes[spiffeID]
	c.mu.RUnlock()
	if n != nil {
		cp := *n
		return &cp, nil
	}
	n, err := c.store.GetNode(ctx, spiffeID)
	if err != nil {
		return nil, fmt.Errorf("entry cache: reading node %q: %w", spiffeID, err)
	}
	return n, nil
}

func cloneNode(n *datastore.AttestedNode) *datastore.AttestedNode {
	cp := *n
	cp.Selectors = slices.Clip(slices.Clone(n.Selectors))
	return &cp
}

// Counts returns how many entries and attested nodes the cache holds, and
// how many of those nodes are banned (0s before Load).
func (c *Cache) Counts() (entries, nodes, banned int) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.st == nil {
		return 0, 0, 0
	}
	for _, n := range c.st.nodes {
		if n.Banned() {
			banned++
		}
	}
	return len(c.st.entries), len(c.st.nodes), banned
}

// AdminAndDownstream reports whether any unexpired entry with SPIFFE ID id
// has admin, respectively downstream, set.
func (c *Cache) AdminAndDownstream(ctx context.Context, id spiffeid.ID) (admin, downstream bool, err error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.st == nil {
		return false, false, ErrNotLoaded
	}
	now := c.clk.Now().Unix()
	for e := range c.st.bySPIFFEID[id.String()].all() {
		if e.ExpiresAt != 0 && e.ExpiresAt <= now {
			continue
		}
		admin = admin || e.Admin
		downstream = downstream || e.Downstream
	}
	return admin, downstream, nil
}

// Subscribe registers interest in agentID's authorized set. The channel is
// signalled (coalesced, buffer 1) when the set may have changed or a bundle
// changed; call AuthorizedEntries after subscribing and after every signal.
// The returned func unsubscribes; it is idempotent.
func (c *Cache) Subscribe(agentID spiffeid.ID) (<-chan struct{}, func()) {
	agent := agentID.String()
	sub := &subscriber{ch: make(chan struct{}, 1)}
	c.subMu.Lock()
	m := c.subs[agent]
	if m == nil {
		m = make(map[*subscriber]struct{})
		c.subs[agent] = m
	}
	m[sub] = struct{}{}
	c.subMu.Unlock()
	var once sync.Once
	return sub.ch, func() {
		once.Do(func() {
			c.subMu.Lock()
			defer c.subMu.Unlock()
			m := c.subs[agent]
			delete(m, sub)
			if len(m) == 0 {
				delete(c.subs, agent)
				delete(c.reach, agent)
			}
		})
	}
}

func (c *Cache) wake(agents map[string]struct{}) {
	if len(agents) == 0 {
		return
	}
	c.subMu.Lock()
	defer c.subMu.Unlock()
	for agent := range agents {
		for s := range c.subs[agent] {
			signal(s.ch)
		}
	}
}

func (c *Cache) wakeAll() {
	c.subMu.Lock()
	defer c.subMu.Unlock()
	for _, m := range c.subs {
		for s := range m {
			signal(s.ch)
		}
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
