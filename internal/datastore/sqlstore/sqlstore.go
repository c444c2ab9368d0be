// Package sqlstore implements datastore.DataStore on database/sql, for
// SQLite (modernc.org/sqlite, pure Go; the default) and PostgreSQL (pgx,
// for several servers sharing one database).
//
// One SQL codebase serves both: queries are written with '?' placeholders
// in SQL both accept (explicit transactions, INSERT ... ON CONFLICT,
// DELETE ... RETURNING) and pass through a per-dialect rebind step; the
// few differences are hooks of the dialect (row locking clauses, the
// schema_version table, migration locking, which error codes mean
// "retry"). Each dialect has its own numbered migrations
// (migrations/<dialect>), with the same versions in both.
//
// SQLite concurrency: writes go through a pool of exactly one connection
// whose transactions begin IMMEDIATE, reads through a separate small pool of
// query-only connections. In WAL mode readers never block the writer and
// the writer never sees SQLITE_BUSY from its own process; busy_timeout
// covers other processes opening the same file.
//
// SQLite durability: every connection runs with synchronous=FULL, so a
// commit (an acknowledged API write) is fsynced to the WAL before it
// returns and survives a power failure, not only a process crash.
// Config.Synchronous "normal" trades that for fewer fsyncs: in WAL mode a
// power failure may then lose the most recent commits (never corrupt the
// database).
//
// PostgreSQL concurrency: see postgres.go.
package sqlstore

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
)

// Config configures Open.
type Config struct {
	// DatabaseType is "sqlite3" (SPIRE's spelling) or "sqlite", or
	// "postgres" (or "postgresql").
	DatabaseType string
	// ConnectionString is, for SQLite, a file path (e.g.
	// /var/lib/sigil/datastore.sqlite3) or a file: URI; for PostgreSQL a
	// libpq-style connection string ("dbname=sigil host=db.example
	// user=sigil sslmode=verify-full") or a postgres:// URL.
	ConnectionString string
	// ROConnectionString (PostgreSQL only) is a read replica for the reads
	// that tolerate lag (datastore.TolerateStale); "" = none.
	ROConnectionString string
	// MaxOpenConns, MaxIdleConns (PostgreSQL only) size each connection
	// pool; nil = 100 each (SPIRE's defaults).
	MaxOpenConns, MaxIdleConns *int
	// ConnMaxLifetime (PostgreSQL only) closes connections this old; 0 =
	// unlimited.
	ConnMaxLifetime time.Duration
	Log             *slog.Logger
	// Clock stamps CreatedAt and event rows; the real clock when nil.
	Clock clock.Clock
	// Synchronous (SQLite only) is SQLite's synchronous setting: "full" (the default when
	// empty: a commit is durable on return) or "normal" (faster; in WAL mode
	// a power failure may lose the last commits). Matched case-insensitively.
	Synchronous string
}

// SQLite synchronous modes accepted by Config.Synchronous.
const (
	SynchronousFull   = "full"
	SynchronousNormal = "normal"
)

// synchronousPragma maps Config.Synchronous to the PRAGMA argument and the
// value PRAGMA synchronous reads back.
func synchronousPragma(mode string) (arg string, want int, err error) {
	switch strings.ToLower(strings.TrimSpace(mode)) {
	case "", SynchronousFull:
		return "FULL", 2, nil
	case SynchronousNormal:
		return "NORMAL", 1, nil
	}
	return "", 0, fmt.Errorf("datastore: unknown synchronous mode %q (want %q or %q)", mode, SynchronousFull, SynchronousNormal)
}

// ErrInvalidPage is datastore.ErrInvalidPage, kept here for callers that
// name the implementation.
var ErrInvalidPage = datastore.ErrInvalidPage

// busyTimeoutMS bounds how long a connection waits for a lock held by
// another process sharing the database file.
const busyTimeoutMS = 10000

// readPoolSize is the number of concurrent read connections.
const readPoolSize = 4

// Store is a datastore.DataStore backed by SQL.
type Store struct {
	w *sql.DB // writes: exactly one connection for SQLite
	r *sql.DB // reads: query-only connections for SQLite; w for PostgreSQL
	// ro is PostgreSQL's read replica (ro_connection_string), or nil.
	ro      *sql.DB
	dialect dialect
	log     *slog.Logger
	clock   clock.Clock
	// notify tracks journal appends and calls the OnChange functions
	// (notify.go); listenCfg is the PostgreSQL connection Listen uses, nil
	// for SQLite.
	notify    notifier
	listenCfg *pgx.ConnConfig
	// listening is true while Listen holds its connection with LISTEN in
	// effect.
	listening atomic.Bool
}

var _ datastore.DataStore = (*Store)(nil)

// Check validates the settings as Open does, without touching the database:
// the type is supported and the connection strings parse. A server's
// pre-start checks (run and validate) use it; like SPIRE's validate, it does
// not connect to PostgreSQL (Open does).
func (cfg Config) Check() error {
	typ, err := cfg.databaseType()
	if err != nil {
		return err
	}
	if typ == postgresDialect.name {
		if _, err := parsePostgresConn("connection_string", cfg.ConnectionString); err != nil {
			return err
		}
		if cfg.ROConnectionString != "" {
			if _, err := parsePostgresConn("ro_connection_string", cfg.ROConnectionString); err != nil {
				return err
			}
		}
		for _, n := range []*int{cfg.MaxOpenConns, cfg.MaxIdleConns} {
			if n != nil && (*n < 0 || *n > maxPoolSize) {
				return fmt.Errorf("datastore: connection pool size %d is out of range (0 to %d)", *n, maxPoolSize)
			}
		}
		if cfg.ConnMaxLifetime < 0 {
			return errors.New("datastore: conn_max_lifetime must not be negative")
		}
		if cfg.Synchronous != "" {
			return errors.New("datastore: the synchronous setting applies to SQLite only")
		}
		return nil
	}
	if cfg.ROConnectionString != "" || cfg.MaxOpenConns != nil || cfg.MaxIdleConns != nil || cfg.ConnMaxLifetime != 0 {
		return errors.New("datastore: ro_connection_string, max_open_conns, max_idle_conns and conn_max_lifetime apply to PostgreSQL only")
	}
	if _, _, err := parseSQLiteConn(cfg.ConnectionString); err != nil {
		return err
	}
	if _, _, err := synchronousPragma(cfg.Synchronous); err != nil {
		return err
	}
	return nil
}

// databaseType returns the dialect name of cfg.DatabaseType.
func (cfg Config) databaseType() (string, error) {
	switch strings.ToLower(strings.TrimSpace(cfg.DatabaseType)) {
	case "sqlite3", "sqlite":
		return sqliteDialect.name, nil
	case "postgres", "postgresql":
		return postgresDialect.name, nil
	case "":
		return "", errors.New("datastore: database_type is required (sqlite3 or postgres)")
	default:
		return "", fmt.Errorf("datastore: unknown database_type %q (supported: sqlite3, postgres)", cfg.DatabaseType)
	}
}

// Open opens the database and applies pending migrations. For SQLite the
// file is created 0600 and its parent directory 0700 when absent; a
// PostgreSQL database must exist (Open creates the tables).
func Open(ctx context.Context, cfg Config) (*Store, error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	s := &Store{
		log:   log,
		clock: clock.OrReal(cfg.Clock),
	}
	if typ, _ := cfg.databaseType(); typ == postgresDialect.name {
		s.dialect = postgresDialect
		if err := s.openPostgres(ctx, cfg); err != nil {
			return nil, err
		}
		return s, nil
	}
	syncArg, syncWant, err := synchronousPragma(cfg.Synchronous)
	if err != nil {
		return nil, err
	}
	s.dialect = sqliteDialect
	if err := s.openSQLite(ctx, cfg.ConnectionString, syncArg, syncWant); err != nil {
		return nil, err
	}
	return s, nil
}

// openSQLite opens the write and read pools; every connection of both runs
// PRAGMA synchronous(syncArg), which reads back as syncWant.
func (s *Store) openSQLite(ctx context.Context, conn, syncArg string, syncWant int) error {
	path, uriQuery, err := parseSQLiteConn(conn)
	if err != nil {
		return err
	}
	if err := prepareSQLiteFile(path, s.log); err != nil {
		return err
	}
	base := "file:" + escapeURIPath(path)

	wq := cloneValues(uriQuery)
	wq.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeoutMS))
	wq.Add("_pragma", "journal_mode(WAL)")
	wq.Add("_pragma", "synchronous("+syncArg+")")
	wq.Add("_pragma", "foreign_keys(1)")
	wq.Set("_txlock", "immediate")
	w, err := sql.Open("sqlite", base+"?"+wq.Encode())
	if err != nil {
		return fmt.Errorf("datastore: open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	if err := checkWAL(ctx, w, syncWant); err != nil {
		w.Close()
		return fmt.Errorf("datastore: open %s: %w", path, err)
	}
	s.w = w
	if err := s.migrate(ctx, migrationsFS, s.dialect.migrations); err != nil {
		w.Close()
		return fmt.Errorf("datastore: %s: %w", path, err)
	}

	rq := cloneValues(uriQuery)
	rq.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeoutMS))
	rq.Add("_pragma", "synchronous("+syncArg+")")
	rq.Add("_pragma", "foreign_keys(1)")
	rq.Add("_pragma", "query_only(1)")
	r, err := sql.Open("sqlite", base+"?"+rq.Encode())
	if err != nil {
		w.Close()
		return fmt.Errorf("datastore: open %s for reading: %w", path, err)
	}
	r.SetMaxOpenConns(readPoolSize)
	r.SetMaxIdleConns(readPoolSize)
	r.SetConnMaxIdleTime(5 * time.Minute)
	if err := r.PingContext(ctx); err != nil {
		r.Close()
		w.Close()
		return fmt.Errorf("datastore: open %s for reading: %w", path, err)
	}
	s.r = r
	s.log.Info("Datastore opened", "type", "sqlite3", "path", path, "synchronous", strings.ToLower(syncArg))
	return nil
}

// checkWAL connects and verifies the pragmas took effect.
func checkWAL(ctx context.Context, db *sql.DB, syncWant int) error {
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fmt.Errorf("read journal_mode: %w", err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("journal_mode is %q, want wal (is the filesystem WAL-capable?)", mode)
	}
	var fk int
	if err := db.QueryRowContext(ctx, "PRAGMA foreign_keys").Scan(&fk); err != nil {
		return fmt.Errorf("read foreign_keys: %w", err)
	}
	if fk != 1 {
		return errors.New("foreign keys could not be enabled")
	}
	var sync int
	if err := db.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&sync); err != nil {
		return fmt.Errorf("read synchronous: %w", err)
	}
	if sync != syncWant {
		return fmt.Errorf("synchronous is %d, want %d", sync, syncWant)
	}
	return nil
}

// parseSQLiteConn returns the file path and any URI query parameters of a
// SQLite connection string (a path or a file: URI).
func parseSQLiteConn(conn string) (string, url.Values, error) {
	conn = strings.TrimSpace(conn)
	if conn == "" {
		return "", nil, errors.New("datastore: connection_string is required (path of the SQLite file)")
	}
	q := url.Values{}
	path := conn
	if strings.HasPrefix(conn, "file:") {
		u, err := url.Parse(conn)
		if err != nil {
			return "", nil, fmt.Errorf("datastore: invalid connection_string %q: %w", conn, err)
		}
		if u.Host != "" && u.Host != "localhost" {
			return "", nil, fmt.Errorf("datastore: connection_string %q: remote hosts are not supported", conn)
		}
		path = u.Path
		if u.Opaque != "" {
			if path, err = url.PathUnescape(u.Opaque); err != nil {
				return "", nil, fmt.Errorf("datastore: invalid connection_string %q: %w", conn, err)
			}
		}
		q = u.Query()
		for k := range q {
			if strings.HasPrefix(k, "_") {
				// Connection behaviour (pragmas, locking) is ours to set.
				return "", nil, fmt.Errorf("datastore: connection_string parameter %q is not allowed", k)
			}
		}
		if m := q.Get("mode"); m == "memory" || m == "ro" {
			return "", nil, fmt.Errorf("datastore: connection_string mode=%s is not supported", m)
		}
	}
	if path == "" || path == ":memory:" {
		return "", nil, fmt.Errorf("datastore: connection_string %q: an on-disk SQLite file is required", conn)
	}
	return filepath.Clean(path), q, nil
}

// prepareSQLiteFile creates the parent directory (0700) and the database
// file (0600) when absent, so the file is never world-readable even for a
// moment.
func prepareSQLiteFile(path string, log *slog.Logger) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("datastore: create directory %s: %w", dir, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case err == nil:
		if err := f.Close(); err != nil {
			return fmt.Errorf("datastore: create %s: %w", path, err)
		}
	case errors.Is(err, os.ErrExist):
		fi, err := os.Stat(path)
		if err != nil {
			return fmt.Errorf("datastore: stat %s: %w", path, err)
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("datastore: %s is not a regular file", path)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			log.Warn("Datastore file is accessible by group or others", "path", path, "mode", fi.Mode().Perm().String())
		}
	default:
		return fmt.Errorf("datastore: create %s: %w", path, err)
	}
	return nil
}

// escapeURIPath escapes the characters that are special in a SQLite URI path.
func escapeURIPath(p string) string {
	return strings.NewReplacer("%", "%25", "?", "%3F", "#", "%23").Replace(p)
}

func cloneValues(v url.Values) url.Values {
	out := url.Values{}
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}

// Close closes the connection pools.
func (s *Store) Close() error {
	var errs []error
	if s.ro != nil {
		errs = append(errs, s.ro.Close())
	}
	if s.r != nil && s.r != s.w {
		errs = append(errs, s.r.Close())
	}
	if s.w != nil {
		errs = append(errs, s.w.Close())
	}
	return errors.Join(errs...)
}

// DatabaseType returns the store's dialect: "sqlite3" or "postgres".
func (s *Store) DatabaseType() string { return s.dialect.name }

// dialect holds what differs between SQL backends at query time.
type dialect struct {
	name string
	// numbered is true when placeholders are $1, $2... (PostgreSQL).
	numbered bool
	// readIsolation gives multi-statement reads (a page of entries, then
	// their child rows) one snapshot. SQLite transactions always do;
	// PostgreSQL needs sql.LevelRepeatableRead.
	readIsolation sql.IsolationLevel
	// forUpdate and forShare are appended to a SELECT in a write
	// transaction to lock the rows it reads until the commit ("" for
	// SQLite, whose write transactions are serialized).
	forUpdate, forShare string
	// migrations is the directory of the dialect's migrations in
	// migrationsFS.
	migrations string
	// schemaVersionDDL creates the schema_version table if absent.
	schemaVersionDDL string
	// lockMigrations, when set, runs first in every migration transaction
	// so that servers starting at once migrate one at a time.
	lockMigrations string
	// multiRowInsert makes insertRows send many rows per INSERT.
	multiRowInsert bool
	// advisoryLock, when set, takes a lock named by one int64 argument
	// until the end of the transaction.
	advisoryLock string
	// code returns the SQLSTATE of a database error ("" when none).
	code func(error) string
}

// advisoryLock takes the dialect's advisory lock on (kind, key) until tx
// ends; nothing for a dialect without one (SQLite: writers are serialized).
func (s *Store) advisoryLock(ctx context.Context, tx *sql.Tx, kind, key string) error {
	if s.dialect.advisoryLock == "" {
		return nil
	}
	h := fnv.New64a()
	h.Write([]byte(kind))
	h.Write([]byte{0})
	h.Write([]byte(key))
	if _, err := tx.ExecContext(ctx, s.q(s.dialect.advisoryLock), int64(h.Sum64())); err != nil {
		return fmt.Errorf("lock %s: %w", kind, err)
	}
	return nil
}

var sqliteDialect = dialect{
	name:       "sqlite3",
	migrations: "migrations/sqlite",
	schemaVersionDDL: `CREATE TABLE IF NOT EXISTS schema_version (
	version    INTEGER NOT NULL PRIMARY KEY,
	applied_at INTEGER NOT NULL
)`,
	code: func(error) string { return "" },
}

// retryable reports whether a write transaction that failed with err
// should run again: a deadlock or serialization failure, or a unique
// violation from a racing insert (the re-run sees the committed row).
func (d dialect) retryable(err error) bool {
	switch d.code(err) {
	case pgUniqueViolation, pgSerializationFailure, pgDeadlockDetected:
		return true
	}
	return false
}

// rebind rewrites '?' placeholders for the dialect. Queries never contain
// '?' inside string literals.
func (d dialect) rebind(q string) string {
	if !d.numbered {
		return q
	}
	var b strings.Builder
	b.Grow(len(q) + 16)
	n := 0
	for i := 0; i < len(q); i++ {
		if q[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(q[i])
	}
	return b.String()
}

// q rebinds a query for the store's dialect.
func (s *Store) q(query string) string { return s.dialect.rebind(query) }

// queryer is what *sql.DB and *sql.Tx have in common.
type queryer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// maxWriteAttempts bounds how often writeTx runs a transaction that keeps
// failing with a retryable error (see dialect.retryable).
const maxWriteAttempts = 8

// writeTx runs fn in a write transaction and commits it when fn succeeds.
// A transaction that fails with a retryable error (PostgreSQL: deadlock,
// serialization failure, a unique violation from a racing writer) is run
// again, up to maxWriteAttempts times, so fn must set its outputs afresh
// on every run. A unique violation that persists is ErrAlreadyExists.
func (s *Store) writeTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	for attempt := 1; ; attempt++ {
		err := s.writeTxOnce(ctx, fn)
		if err == nil || !s.dialect.retryable(err) {
			return err
		}
		if attempt == maxWriteAttempts {
			if s.dialect.code(err) == pgUniqueViolation {
				return fmt.Errorf("%w (%d attempts: %v)", datastore.ErrAlreadyExists, attempt, err)
			}
			return fmt.Errorf("%d attempts: %w", attempt, err)
		}
		s.log.DebugContext(ctx, "Retrying a datastore transaction", "attempt", attempt, "sqlstate", s.dialect.code(err))
		// A little jitter so that two servers that collided don't collide
		// again in lockstep.
		wait := time.Duration(attempt) * time.Duration(1+rand.IntN(5)) * time.Millisecond
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

func (s *Store) writeTxOnce(ctx context.Context, fn func(tx *sql.Tx) error) (err error) {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	defer s.takeJournaled(tx) // a failed transaction's marks
	if err = fn(tx); err != nil {
		return err
	}
	changed, err := s.notifyInTx(ctx, tx)
	if err != nil {
		return err
	}
	if err = tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	if changed != 0 {
		s.changed(changed)
	}
	return nil
}

// readTx runs fn in a read transaction (one consistent snapshot).
func (s *Store) readTx(ctx context.Context, fn func(tx *sql.Tx) error) (err error) {
	tx, err := s.reader(ctx).BeginTx(ctx, &sql.TxOptions{ReadOnly: true, Isolation: s.dialect.readIsolation})
	if err != nil {
		return fmt.Errorf("begin read transaction: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	return fn(tx)
}

// reader is the pool for a read: the read replica when there is one and
// ctx tolerates stale reads (datastore.TolerateStale), else s.r.
func (s *Store) reader(ctx context.Context) *sql.DB {
	if s.ro != nil && datastore.StaleTolerated(ctx) {
		return s.ro
	}
	return s.r
}

func (s *Store) now() int64 { return s.clock.Now().Unix() }

// cutoff returns the smallest unix second that is not before t, so that
// "x before t" is "x < cutoff(t)" for whole-second timestamps.
func cutoff(t time.Time) int64 {
	c := t.Unix()
	if t.Nanosecond() > 0 {
		c++
	}
	return c
}

// placeholders returns "?, ?, ..." with n placeholders.
func placeholders(n int) string {
	if n <= 0 {
		return ""
	}
	return strings.Repeat("?, ", n-1) + "?"
}

// Page tokens are the base64url (unpadded, canonical) of the last key
// returned. Keys are SPIFFE IDs, entry IDs or trust domain names, all far
// shorter than maxPageKeyLen.
const maxPageKeyLen = 4096

func encodePageToken(key string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(key))
}

// decodePageToken returns the key of a page token ("" for none). A token
// this store cannot have issued is ErrInvalidPage; the error never repeats
// the token (a client's text, of any size).
func decodePageToken(tok string) (string, error) {
	if tok == "" {
		return "", nil
	}
	if len(tok) > base64.RawURLEncoding.EncodedLen(maxPageKeyLen) {
		return "", fmt.Errorf("page token of %d bytes is too long: %w", len(tok), ErrInvalidPage)
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(tok)
	// The decoder skips '\r' and '\n': only the canonical encoding of a key
	// is a token.
	if err != nil || len(b) == 0 || encodePageToken(string(b)) != tok || !isText(string(b)) {
		return "", fmt.Errorf("malformed page token: %w", ErrInvalidPage)
	}
	return string(b), nil
}

func checkPage(p datastore.Page) (string, error) {
	if p.Size < 0 {
		return "", fmt.Errorf("page size %d: %w", p.Size, ErrInvalidPage)
	}
	return decodePageToken(p.Token)
}

// limitClause returns " LIMIT ?" and the arg for a page (one extra row to
// learn whether another page follows), or nothing for Size 0.
func limitClause(p datastore.Page) (string, []any) {
	if p.Size == 0 {
		return "", nil
	}
	return " LIMIT ?", []any{p.Size + 1}
}

// chunk splits n items into ranges of at most size.
func chunks(n, size int) [][2]int {
	var out [][2]int
	for i := 0; i < n; i += size {
		j := min(i+size, n)
		out = append(out, [2]int{i, j})
	}
	return out
}

// maxInArgs bounds the number of values in one IN (...) list.
const maxInArgs = 500

// PoolStats reports the write pool's statistics (for PostgreSQL, the
// primary's pool: the settings max_open_conns and max_idle_conns size).
func (s *Store) PoolStats() sql.DBStats { return s.w.Stats() }
