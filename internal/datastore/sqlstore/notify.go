package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sigil-spiffe/sigil/internal/datastore"
)

// Change notification: the store notifies, callers don't poke.
//
// Every write that appends to a journal (entry, node or bundle events)
// marks its transaction; when it commits, the store calls every function
// given to OnChange, synchronously, before the write returns. A follower of
// the journals (internal/server/entrycache) registers one and so sees this
// server's writes without any caller telling it.
//
// Writes made by other servers sharing a PostgreSQL database arrive the
// same way: the marked transaction also runs pg_notify on JournalChannel
// (delivered by PostgreSQL when, and only if, it commits), and Listen, run
// by each server on a dedicated connection, calls the OnChange functions
// for every notification, its own server's included. Notifications are a
// wake-up, not the data: the follower reads the journals by event ID (with
// its gap handling), and keeps polling for notifications a listener missed
// (while reconnecting, say). SQLite has no notifications: servers sharing
// one SQLite file see each other's writes by polling.

// JournalChannel is the PostgreSQL notification channel of journal
// appends. The payload names the journals written ("entries,nodes").
const JournalChannel = "sigil_journal"

func parseChange(payload string) datastore.Change {
	var c datastore.Change
	for _, p := range strings.Split(payload, ",") {
		switch p {
		case "entries":
			c |= datastore.ChangeEntries
		case "nodes":
			c |= datastore.ChangeNodes
		case "bundles":
			c |= datastore.ChangeBundles
		}
	}
	if c == 0 {
		return datastore.ChangeAll
	}
	return c
}

// notifier tracks the journals each open write transaction appended to,
// and the OnChange functions.
type notifier struct {
	mu      sync.Mutex
	pending map[*sql.Tx]datastore.Change
	subs    []func(datastore.Change)
}

// OnChange registers fn, called after every committed write that appended
// to a journal (synchronously, before the write returns) and, while
// Listen runs, for every notification of a commit on the database (any
// server's). fn must not block.
func (s *Store) OnChange(fn func(datastore.Change)) {
	s.notify.mu.Lock()
	defer s.notify.mu.Unlock()
	s.notify.subs = append(s.notify.subs, fn)
}

// journaled marks tx as appending to the journals of c.
func (s *Store) journaled(tx *sql.Tx, c datastore.Change) {
	s.notify.mu.Lock()
	defer s.notify.mu.Unlock()
	if s.notify.pending == nil {
		s.notify.pending = make(map[*sql.Tx]datastore.Change)
	}
	s.notify.pending[tx] |= c
}

// takeJournaled returns (and forgets) tx's marks.
func (s *Store) takeJournaled(tx *sql.Tx) datastore.Change {
	s.notify.mu.Lock()
	defer s.notify.mu.Unlock()
	c := s.notify.pending[tx]
	delete(s.notify.pending, tx)
	return c
}

// changed calls the OnChange functions.
func (s *Store) changed(c datastore.Change) {
	s.notify.mu.Lock()
	subs := s.notify.subs
	s.notify.mu.Unlock()
	for _, fn := range subs {
		fn(c)
	}
}

// notifyInTx runs pg_notify in tx for its marks, on PostgreSQL (delivered
// on commit). It returns the marks.
func (s *Store) notifyInTx(ctx context.Context, tx *sql.Tx) (datastore.Change, error) {
	c := s.takeJournaled(tx)
	if c == 0 || s.dialect.name != postgresDialect.name {
		return c, nil
	}
	if _, err := tx.ExecContext(ctx, "SELECT pg_notify($1, $2)", JournalChannel, c.String()); err != nil {
		return c, fmt.Errorf("notify %s: %w", JournalChannel, err)
	}
	return c, nil
}

// Listen backoff bounds.
const (
	listenMinBackoff = 100 * time.Millisecond
	listenMaxBackoff = 10 * time.Second
	// listenPingInterval is how long the listener waits quietly before it
	// checks its connection; listenPingTimeout bounds that check.
	listenPingInterval = 30 * time.Second
	listenPingTimeout  = 10 * time.Second
)

// Listen is a component (run it beside the server's other components): on
// PostgreSQL it holds a dedicated connection listening on JournalChannel
// and calls the OnChange functions for every notification, until ctx ends.
// A lost connection is re-established with backoff; after each
// (re)connection it reports a change to every journal, for what it may
// have missed. On SQLite it returns nil at once. It returns nil when ctx
// ends.
func (s *Store) Listen(ctx context.Context) error {
	if s.listenCfg == nil {
		return nil
	}
	backoff := listenMinBackoff
	for {
		connected, err := s.listenOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if connected {
			backoff = listenMinBackoff
		}
		s.log.Warn("Datastore change listener disconnected; polling until it is back", "channel", JournalChannel, "retry_in", backoff, "error", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, listenMaxBackoff)
	}
}

// ChangeListener reports whether the store has a change listener to run
// (PostgreSQL: Listen) and whether Listen holds its connection now, with
// LISTEN in effect. While it does not, other servers' writes are seen by
// polling only.
func (s *Store) ChangeListener() (listens, connected bool) {
	return s.listenCfg != nil, s.listening.Load()
}

// listenOnce connects, listens and dispatches notifications until the
// connection fails or ctx ends. connected reports whether LISTEN worked.
func (s *Store) listenOnce(ctx context.Context) (connected bool, err error) {
	conn, err := pgx.ConnectConfig(ctx, s.listenCfg)
	if err != nil {
		return false, pgConnectError(err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+JournalChannel); err != nil {
		return false, fmt.Errorf("LISTEN %s: %w", JournalChannel, err)
	}
	s.log.Debug("Datastore change listener connected", "channel", JournalChannel)
	s.listening.Store(true)
	defer s.listening.Store(false)
	// Whatever was committed while not listening is only known to the
	// journals: have them read.
	s.changed(datastore.ChangeAll)
	for {
		// A connection that silently died (a partition) would wait for
		// ever: ping it after a quiet listenPingInterval.
		wctx, cancel := context.WithTimeout(ctx, listenPingInterval)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return true, nil
		case err == nil:
			s.changed(parseChange(n.Payload))
		case errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err):
			pctx, cancel := context.WithTimeout(ctx, listenPingTimeout)
			err := conn.Ping(pctx)
			cancel()
			if err != nil && ctx.Err() == nil {
				return true, fmt.Errorf("ping: %w", err)
			}
		default:
			return true, err
		}
	}
}
