package sqlstore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/testutil/pgtest"
)

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// backend is a database the storage suite runs against.
type backend struct {
	name string
	// config returns the configuration of a new, empty database.
	config func(t *testing.T) Config
	// failInserts makes every insert into table fail; unfail undoes it.
	failInserts, unfail func(table string) string
}

var backends = []backend{
	{
		name: "sqlite3",
		config: func(t *testing.T) Config {
			return Config{DatabaseType: "sqlite3", ConnectionString: filepath.Join(t.TempDir(), "datastore.sqlite3")}
		},
		failInserts: func(table string) string {
			return "CREATE TRIGGER fail_" + table + " BEFORE INSERT ON " + table + " BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
		},
		unfail: func(table string) string { return "DROP TRIGGER fail_" + table },
	},
	{
		name: "postgres",
		config: func(t *testing.T) Config {
			c := pgtest.Shared(t)
			// A copy of a database migrated once: the migrations are
			// tested by TestMigrationVersioning on it and by
			// TestPostgresReadReplica on empty ones.
			tmpl := c.Template(t, "sqlstore", func(conn string) error {
				s, err := Open(context.Background(), Config{DatabaseType: "postgres", ConnectionString: conn})
				if err != nil {
					return err
				}
				return s.Close()
			})
			return Config{DatabaseType: "postgres", ConnectionString: c.ConnString(c.CreateDatabase(t, tmpl))}
		},
		failInserts: func(table string) string {
			return "CREATE FUNCTION fail_" + table + "() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$; " +
				"CREATE TRIGGER fail_" + table + " BEFORE INSERT ON " + table + " FOR EACH ROW EXECUTE FUNCTION fail_" + table + "()"
		},
		unfail: func(table string) string {
			return "DROP TRIGGER fail_" + table + " ON " + table + "; DROP FUNCTION fail_" + table + "()"
		},
	},
}

// suite holds the storage tests that every backend must pass: its methods
// named Test* run once per backend (TestSuite/<backend>/<method>), in the
// spirit of SPIRE's sqltest.
type suite struct{ backend }

// TestSuite runs the storage suite against SQLite and PostgreSQL (a real
// server; see pgtest: skipped when PostgreSQL is not installed, except in
// CI).
func TestSuite(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			if b.name == "postgres" {
				pgtest.Require(t)
			}
			v := reflect.ValueOf(suite{b})
			ty := v.Type()
			for i := range ty.NumMethod() {
				m := ty.Method(i)
				if !strings.HasPrefix(m.Name, "Test") {
					continue
				}
				fn, ok := v.Method(i).Interface().(func(*testing.T))
				if !ok {
					t.Fatalf("suite method %s is not func(*testing.T)", m.Name)
				}
				t.Run(m.Name, fn)
			}
		})
	}
}

type fixture struct {
	store *Store
	cfg   Config
	clk   *clock.Fake
	b     backend
}

// newFixture opens a store on a new, empty database of the backend.
func (x suite) newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{cfg: x.config(t), clk: clock.NewFake(t0), b: x.backend}
	f.cfg.Clock = f.clk
	f.store = f.open(t)
	return f
}

// sqliteFixture is newFixture on SQLite, for the tests of SQLite's own
// settings.
func sqliteFixture(t *testing.T) *fixture {
	return suite{backends[0]}.newFixture(t)
}

// open opens another store on the fixture's database.
func (f *fixture) open(t *testing.T) *Store {
	t.Helper()
	s, err := Open(context.Background(), f.cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// reopen closes the store and opens the same database again.
func (f *fixture) reopen(t *testing.T) {
	t.Helper()
	if err := f.store.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	f.store = f.open(t)
}

// exec runs statements on the fixture's database.
func (f *fixture) exec(t *testing.T, stmts string) {
	t.Helper()
	if _, err := f.store.w.ExecContext(context.Background(), stmts); err != nil {
		t.Fatalf("%s: %v", stmts, err)
	}
}

func sels(ss ...string) []selector.Selector {
	out := make([]selector.Selector, 0, len(ss))
	for _, s := range ss {
		sel, err := selector.Parse(s)
		if err != nil {
			panic(err)
		}
		out = append(out, sel)
	}
	return out
}

func mustCreate(t *testing.T, s *Store, es ...*datastore.Entry) []*datastore.Entry {
	t.Helper()
	res, err := s.CreateEntries(context.Background(), es)
	if err != nil {
		t.Fatalf("CreateEntries: %v", err)
	}
	out := make([]*datastore.Entry, len(res))
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("CreateEntries[%d]: %v", i, r.Err)
		}
		out[i] = r.Entry
	}
	return out
}

func wantErr(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error = %v, want %v", err, target)
	}
}

func entryIDs(es []*datastore.Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.ID
	}
	slices.Sort(out)
	return out
}

func ptr[T any](v T) *T { return &v }

// addBundles stores an (empty) bundle for each trust domain, so entries may
// federate with them.
func addBundles(t *testing.T, s *Store, tds ...string) {
	t.Helper()
	for _, td := range tds {
		if _, err := s.SetBundle(context.Background(), &datastore.Bundle{TrustDomain: td}); err != nil {
			t.Fatalf("SetBundle %s: %v", td, err)
		}
	}
}
