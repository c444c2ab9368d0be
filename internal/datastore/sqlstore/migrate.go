package sqlstore

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
)

// migrationsFS holds the numbered migrations of every dialect:
// migrations/<dialect>/NNNN_description.sql, applied in order, each in its
// own transaction together with its schema_version row.
//
//go:embed migrations
var migrationsFS embed.FS

// ErrSchemaTooNew is returned by Open for a database migrated by a newer
// binary.
var ErrSchemaTooNew = errors.New("database schema is newer than this binary supports")

type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations reads and orders the migrations in dir; versions must be
// 1, 2, 3... without gaps or duplicates.
func loadMigrations(fsys fs.FS, dir string) ([]migration, error) {
	des, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	var ms []migration
	for _, de := range des {
		if de.IsDir() || !strings.HasSuffix(de.Name(), ".sql") {
			continue
		}
		num, _, ok := strings.Cut(de.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: name must be NNNN_description.sql", de.Name())
		}
		b, err := fs.ReadFile(fsys, path.Join(dir, de.Name()))
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", de.Name(), err)
		}
		ms = append(ms, migration{version: v, name: de.Name(), sql: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %s: expected version %d (versions must be contiguous from 1)", m.name, i+1)
		}
	}
	if len(ms) == 0 {
		return nil, errors.New("no migrations found")
	}
	return ms, nil
}

// schemaVersion returns the highest applied migration (0 for a new database).
func (s *Store) schemaVersion(ctx context.Context, q queryer) (int, error) {
	var v sql.NullInt64
	if err := q.QueryRowContext(ctx, "SELECT MAX(version) FROM schema_version").Scan(&v); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return int(v.Int64), nil
}

// migrate applies the pending migrations of dir. It refuses a database whose
// schema is newer than the newest migration it knows.
func (s *Store) migrate(ctx context.Context, fsys fs.FS, dir string) error {
	ms, err := loadMigrations(fsys, dir)
	if err != nil {
		return err
	}
	latest := ms[len(ms)-1].version
	for {
		applied := false
		// Each step re-reads the version inside its write transaction,
		// which holds the migration lock (SQLite: the IMMEDIATE write
		// lock; PostgreSQL: an advisory lock), so servers opening a new
		// database at once don't both apply the same migration.
		err := s.writeTx(ctx, func(tx *sql.Tx) error {
			applied = false
			if s.dialect.lockMigrations != "" {
				if _, err := tx.ExecContext(ctx, s.dialect.lockMigrations); err != nil {
					return fmt.Errorf("lock migrations: %w", err)
				}
			}
			if _, err := tx.ExecContext(ctx, s.dialect.schemaVersionDDL); err != nil {
				return fmt.Errorf("create schema_version table: %w", err)
			}
			cur, err := s.schemaVersion(ctx, tx)
			if err != nil {
				return err
			}
			if cur > latest {
				return fmt.Errorf("%w: database is at version %d, this binary knows up to %d; upgrade sigil-server", ErrSchemaTooNew, cur, latest)
			}
			if cur == latest {
				return nil
			}
			m := ms[cur]
			if _, err := tx.ExecContext(ctx, m.sql); err != nil {
				return fmt.Errorf("apply migration %s: %w", m.name, err)
			}
			if _, err := tx.ExecContext(ctx, s.q("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)"), m.version, s.now()); err != nil {
				return fmt.Errorf("record migration %s: %w", m.name, err)
			}
			s.log.Info("Applied datastore migration", "version", m.version, "name", m.name)
			applied = true
			return nil
		})
		if err != nil {
			return err
		}
		if !applied {
			return nil
		}
	}
}

// SchemaVersion reports the schema version of the open database.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	return s.schemaVersion(ctx, s.r)
}
