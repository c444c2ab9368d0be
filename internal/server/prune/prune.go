// Package prune is the server's pruning loop: every Interval it deletes
// the join tokens and registration entries that have expired, and the
// change-journal events (entry, node, bundle) older than EventRetention.
//
// # Journal retention and several servers
//
// Every server's entry cache follows the journals by position (the last
// event ID it applied), and servers sharing a database each run this
// loop. Pruned events are gone for a follower that has not read them yet,
// so the store records each journal's horizon (the highest event ID
// pruned) and a follower whose position is below it, or that still waits
// for a skipped ID at or below it, reloads in full instead of missing the
// changes (see entrycache, "Pruned journals"). EventRetention only decides
// how far behind a server may fall before it must reload: it must exceed
// how long a follower waits for a skipped ID (entrycache.GapTimeout, for
// transactions that commit late) and the clock skew between the servers
// (an event's time is its writer's clock, the cutoff the pruner's): New
// raises a shorter one to MinEventRetention.
package prune

import (
	"context"
	"log/slog"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/server/entrycache"
)

const (
	// DefaultInterval is how often the loop prunes.
	DefaultInterval = time.Minute
	// DefaultEventRetention is how long journal events are kept: a server
	// stopped or cut off from the database for longer reloads its cache
	// in full when it comes back (one read of every entry and agent).
	DefaultEventRetention = time.Hour
	// MinEventRetention is the shortest retention New accepts: twice how
	// long a skipped journal ID is waited for.
	MinEventRetention = 2 * entrycache.GapTimeout
)

// Store is the part of the datastore the loop prunes.
type Store interface {
	PruneJoinTokens(ctx context.Context, before time.Time) (int, error)
	PruneEntries(ctx context.Context, before time.Time) (int, error)
	PruneEvents(ctx context.Context, before time.Time) (int, error)
}

// Config configures a Pruner.
type Config struct {
	Store Store
	Clock clock.Clock // default: the real clock
	Log   *slog.Logger
	// Interval is how often it prunes (default DefaultInterval).
	Interval time.Duration
	// EventRetention is how long journal events are kept (default
	// DefaultEventRetention, at least MinEventRetention).
	EventRetention time.Duration
}

// Pruner runs the pruning loop.
type Pruner struct {
	store     Store
	clk       clock.Clock
	log       *slog.Logger
	interval  time.Duration
	retention time.Duration
}

// New returns a Pruner; Run starts it.
func New(cfg Config) *Pruner {
	p := &Pruner{store: cfg.Store, clk: cfg.Clock, log: cfg.Log, interval: cfg.Interval, retention: cfg.EventRetention}
	if p.clk == nil {
		p.clk = clock.Real{}
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	if p.interval <= 0 {
		p.interval = DefaultInterval
	}
	if p.retention <= 0 {
		p.retention = DefaultEventRetention
	}
	p.retention = max(p.retention, MinEventRetention)
	return p
}

// Run prunes every Interval until ctx ends. Failures are logged and
// retried at the next round.
func (p *Pruner) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.clk.After(p.interval):
		}
		p.Prune(ctx)
	}
}

// Prune runs one round.
func (p *Pruner) Prune(ctx context.Context) {
	now := p.clk.Now()
	if n, err := p.store.PruneJoinTokens(ctx, now); err != nil {
		p.log.Warn("Could not prune join tokens", "error", err)
	} else if n > 0 {
		p.log.Debug("Pruned expired join tokens", "count", n)
	}
	if n, err := p.store.PruneEntries(ctx, now); err != nil {
		p.log.Warn("Could not prune registration entries", "error", err)
	} else if n > 0 {
		p.log.Info("Pruned expired registration entries", "count", n)
	}
	if n, err := p.store.PruneEvents(ctx, now.Add(-p.retention)); err != nil {
		p.log.Warn("Could not prune journal events", "error", err)
	} else if n > 0 {
		p.log.Debug("Pruned journal events", "count", n, "older_than", p.retention)
	}
}
