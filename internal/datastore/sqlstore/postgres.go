package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/sigil-spiffe/sigil/internal/clip"
)

// PostgreSQL.
//
// Writes run in READ COMMITTED transactions (PostgreSQL's default). Where a
// write reads a row to change it (an entry, a node, a bundle), it locks that
// row first (SELECT ... FOR UPDATE), so concurrent writers of one row,
// from this server or another sharing the database, take turns and none
// undoes the other's change (a ban is never lost to a racing renewal).
// Checks of other rows that a write depends on lock them too: an entry that
// federates with a trust domain holds its bundle row FOR SHARE until it
// commits, and DeleteBundle locks the bundle FOR UPDATE before counting
// the entries that use it.
//
// Unique violations (SQLSTATE 23505) from racing inserts are not errors to
// callers: the transaction is run again (bounded), and the re-run sees the
// row the other writer committed and answers as it would have
// sequentially (ErrAlreadyExists for a duplicate, an update for a set).
// Serialization failures and deadlocks (40001, 40P01) are retried the same
// way. Entry inserts use ON CONFLICT DO NOTHING so one duplicate in a
// batch does not abort the others.
//
// Journal (event) IDs come from sequences, which are allocated in
// statement order but committed in transaction order: a reader may see
// event N+1 before event N commits. Followers (internal/server/entrycache)
// treat skipped IDs as gaps to re-check, as SPIRE does.
//
// Multi-statement reads run in REPEATABLE READ, READ ONLY transactions (one
// snapshot). Reads go to the primary (connection_string);
// ro_connection_string, when set, serves only the reads for which a lagging
// replica is harmless: those made with a context marked
// datastore.TolerateStale (the admin API's listings and counts).

// Pool defaults: SPIRE's.
const (
	defaultMaxOpenConns = 100
	defaultMaxIdleConns = 100
	// pgConnMaxIdleTime closes connections idle this long (SPIRE: 30s,
	// not configurable).
	pgConnMaxIdleTime = 30 * time.Second
	// defaultConnectTimeout bounds a connection attempt when the
	// connection string sets no connect_timeout.
	defaultConnectTimeout = 15 * time.Second
	// maxPoolSize bounds max_open_conns and max_idle_conns.
	maxPoolSize = 10000
)

// PostgreSQL error codes (SQLSTATE) the store handles.
const (
	pgUniqueViolation      = "23505"
	pgSerializationFailure = "40001"
	pgDeadlockDetected     = "40P01"
)

// migrationLockKey is the pg_advisory_xact_lock key serializing the
// migrations of servers starting at once on one database ("sigilmig").
const migrationLockKey = 0x7369676d6967

var postgresDialect = dialect{
	name:          "postgres",
	migrations:    "migrations/postgres",
	numbered:      true,
	readIsolation: sql.LevelRepeatableRead,
	forUpdate:     " FOR UPDATE",
	forShare:      " FOR SHARE",
	schemaVersionDDL: `CREATE TABLE IF NOT EXISTS schema_version (
	version    INTEGER NOT NULL PRIMARY KEY,
	applied_at BIGINT  NOT NULL
)`,
	lockMigrations: fmt.Sprintf("SELECT pg_advisory_xact_lock(%d)", migrationLockKey),
	advisoryLock:   "SELECT pg_advisory_xact_lock(?)",
	multiRowInsert: true,
	code: func(err error) string {
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			return pe.Code
		}
		return ""
	},
}

// parsePostgresConn parses a connection string (key=value pairs or a
// postgres:// URL, as libpq and pgx accept). Its errors never repeat the
// string (it may hold a password), only what is wrong with it.
func parsePostgresConn(key, conn string) (*pgx.ConnConfig, error) {
	if strings.TrimSpace(conn) == "" {
		return nil, fmt.Errorf("datastore: %s is required (e.g. \"dbname=sigil user=sigil host=127.0.0.1 sslmode=verify-full\")", key)
	}
	cfg, err := pgx.ParseConfig(conn)
	if err != nil {
		return nil, fmt.Errorf("datastore: %s does not parse: %s", key, pgParseError(err))
	}
	return cfg, nil
}

// pgParseError describes a connection string parse error without the
// string itself.
func pgParseError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return clip.Cut("invalid URL: "+ue.Err.Error(), 128)
	}
	msg := err.Error()
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		// "cannot parse `<redacted string>`: <what> (<cause>)"
		if i := strings.LastIndex(msg, "`: "); i >= 0 {
			msg = msg[i+3:]
		} else {
			msg = "malformed"
		}
		if pe.ConnString != "" {
			msg = strings.ReplaceAll(msg, pe.ConnString, "…")
		}
	}
	return clip.Cut(msg, 128)
}

// openPostgres opens the pools: w on connection_string (writes, and every
// read that must see the latest commit) and, when ro_connection_string is
// set, r on it; otherwise r is w. It checks the server answers, then
// migrates.
func (s *Store) openPostgres(ctx context.Context, cfg Config) error {
	wc, err := parsePostgresConn("connection_string", cfg.ConnectionString)
	if err != nil {
		return err
	}
	w := openPGPool(wc, cfg)
	if err := w.PingContext(ctx); err != nil {
		w.Close()
		return fmt.Errorf("datastore: connect to PostgreSQL (%s): %w", pgTarget(wc), pgConnectError(err))
	}
	s.w, s.r = w, w
	var version string
	if err := w.QueryRowContext(ctx, "SHOW server_version").Scan(&version); err != nil {
		w.Close()
		return fmt.Errorf("datastore: PostgreSQL (%s): read server_version: %w", pgTarget(wc), err)
	}
	if err := s.migrate(ctx, migrationsFS, s.dialect.migrations); err != nil {
		w.Close()
		return fmt.Errorf("datastore: PostgreSQL (%s): %w", pgTarget(wc), err)
	}
	if cfg.ROConnectionString != "" {
		rc, err := parsePostgresConn("ro_connection_string", cfg.ROConnectionString)
		if err != nil {
			w.Close()
			return err
		}
		r := openPGPool(rc, cfg)
		if err := r.PingContext(ctx); err != nil {
			r.Close()
			w.Close()
			return fmt.Errorf("datastore: connect to the PostgreSQL read replica (%s): %w", pgTarget(rc), pgConnectError(err))
		}
		s.ro = r
		s.log.Info("Datastore read replica configured", "target", pgTarget(rc))
	}
	s.listenCfg = listenConfig(wc)
	s.log.Info("Datastore opened", "type", "postgres", "target", pgTarget(wc), "server_version", version)
	return nil
}

// listenConfig is the configuration of Listen's dedicated connection.
func listenConfig(pc *pgx.ConnConfig) *pgx.ConnConfig {
	pc = pc.Copy()
	if pc.RuntimeParams == nil {
		pc.RuntimeParams = map[string]string{}
	}
	if _, ok := pc.RuntimeParams["application_name"]; !ok {
		pc.RuntimeParams["application_name"] = "sigil-server-listener"
	}
	if pc.ConnectTimeout == 0 {
		pc.ConnectTimeout = defaultConnectTimeout
	}
	return pc
}

func openPGPool(pc *pgx.ConnConfig, cfg Config) *sql.DB {
	pc = pc.Copy()
	if pc.RuntimeParams == nil {
		pc.RuntimeParams = map[string]string{}
	}
	if _, ok := pc.RuntimeParams["application_name"]; !ok {
		pc.RuntimeParams["application_name"] = "sigil-server"
	}
	if pc.ConnectTimeout == 0 {
		// An unreachable server fails start-up (and a pooled connection
		// attempt) in bounded time; connect_timeout in the string wins.
		pc.ConnectTimeout = defaultConnectTimeout
	}
	db := stdlib.OpenDB(*pc)
	db.SetMaxOpenConns(defaultMaxOpenConns)
	if cfg.MaxOpenConns != nil {
		db.SetMaxOpenConns(*cfg.MaxOpenConns)
	}
	db.SetMaxIdleConns(defaultMaxIdleConns)
	if cfg.MaxIdleConns != nil {
		db.SetMaxIdleConns(*cfg.MaxIdleConns)
	}
	db.SetConnMaxIdleTime(pgConnMaxIdleTime)
	db.SetConnMaxLifetime(cfg.ConnMaxLifetime)
	return db
}

// pgTarget names a server for logs and errors: host, port, database and
// user, never the password.
func pgTarget(c *pgx.ConnConfig) string {
	return fmt.Sprintf("host=%s port=%d dbname=%s user=%s", c.Host, c.Port, c.Database, c.User)
}

// pgConnectError drops the connection details pgconn repeats (we name the
// target ourselves).
func pgConnectError(err error) error {
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) && ce.Unwrap() != nil {
		return ce.Unwrap()
	}
	return err
}
