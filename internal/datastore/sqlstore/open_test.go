package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/testutil/pgtest"
)

func TestOpenRejectsBadConfig(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name string
		cfg  Config
		want string
	}{
		{"postgres unparsable", Config{DatabaseType: "postgres", ConnectionString: "host=x port=notaport password=hunter2secret"}, "connection_string does not parse"},
		{"postgres url", Config{DatabaseType: "postgres", ConnectionString: "postgres://u:hunter2secret@h:1:2/db"}, "does not parse"},
		{"postgres empty", Config{DatabaseType: "postgres", ConnectionString: " "}, "connection_string is required"},
		{"postgres ro", Config{DatabaseType: "postgres", ConnectionString: "dbname=x", ROConnectionString: "port=x password=hunter2secret"}, "ro_connection_string does not parse"},
		{"postgres pool", Config{DatabaseType: "postgres", ConnectionString: "dbname=x", MaxOpenConns: ptr(-1)}, "out of range"},
		{"postgres lifetime", Config{DatabaseType: "postgres", ConnectionString: "dbname=x", ConnMaxLifetime: -time.Second}, "negative"},
		{"postgres synchronous", Config{DatabaseType: "postgres", ConnectionString: "dbname=x", Synchronous: "full"}, "SQLite only"},
		{"postgres unreachable", Config{DatabaseType: "postgres", ConnectionString: "host=127.0.0.1 port=1 dbname=x user=u password=hunter2secret connect_timeout=5"}, "connect to PostgreSQL (host=127.0.0.1 port=1 dbname=x user=u)"},
		{"sqlite ro", Config{DatabaseType: "sqlite3", ConnectionString: filepath.Join(dir, "x.db"), ROConnectionString: "x"}, "PostgreSQL only"},
		{"sqlite pool", Config{DatabaseType: "sqlite3", ConnectionString: filepath.Join(dir, "x.db"), MaxIdleConns: ptr(3)}, "PostgreSQL only"},
		{"unknown type", Config{DatabaseType: "mysql", ConnectionString: filepath.Join(dir, "x.db")}, "unknown database_type"},
		{"missing type", Config{ConnectionString: filepath.Join(dir, "x.db")}, "database_type is required"},
		{"missing path", Config{DatabaseType: "sqlite3"}, "connection_string is required"},
		{"memory", Config{DatabaseType: "sqlite3", ConnectionString: ":memory:"}, "on-disk"},
		{"memory uri", Config{DatabaseType: "sqlite3", ConnectionString: "file:x?mode=memory"}, "mode=memory"},
		{"driver params", Config{DatabaseType: "sqlite3", ConnectionString: "file:" + filepath.Join(dir, "y.db") + "?_txlock=deferred"}, "not allowed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := Open(context.Background(), c.cfg)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not mention %q", err, c.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("error %q repeats the password", err)
			}
		})
	}
}

func TestOpenCreatesPrivateFileAndDir(t *testing.T) {
	root := t.TempDir()
	path := filepath.Join(root, "var", "lib", "sigil", "datastore.sqlite3")
	s, err := Open(context.Background(), Config{DatabaseType: "sqlite", ConnectionString: path})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	if err := s.SetCAJournal(context.Background(), "x", []byte("y")); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{filepath.Join(root, "var"), filepath.Dir(path)} {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o700 {
			t.Errorf("%s mode = %v, want 0700", d, fi.Mode().Perm())
		}
	}
	for _, f := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode = %v, want 0600", f, fi.Mode().Perm())
		}
	}
}

func TestOpenFileURI(t *testing.T) {
	path := filepath.Join(t.TempDir(), "with space?and#hash.db")
	s, err := Open(context.Background(), Config{DatabaseType: "sqlite3", ConnectionString: "file:" + escapeURIPath(path) + "?cache=private"})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	if err := s.SetCAJournal(context.Background(), "j", []byte("data")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("database not at %s: %v", path, err)
	}
}

func TestPragmas(t *testing.T) {
	f := sqliteFixture(t)
	ctx := context.Background()
	for _, c := range []struct {
		pragma string
		want   string
	}{
		{"journal_mode", "wal"},
		{"foreign_keys", "1"},
		{"synchronous", "2"}, // FULL: acknowledged writes survive power loss
		{"busy_timeout", "10000"},
	} {
		var got string
		if err := f.store.w.QueryRowContext(ctx, "PRAGMA "+c.pragma).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != c.want {
			t.Errorf("write pool: PRAGMA %s = %s, want %s", c.pragma, got, c.want)
		}
	}
	var qo string
	if err := f.store.r.QueryRowContext(ctx, "PRAGMA query_only").Scan(&qo); err != nil {
		t.Fatal(err)
	}
	if qo != "1" {
		t.Errorf("read pool: query_only = %s, want 1", qo)
	}
}

// poolSynchronous returns PRAGMA synchronous of n connections of db held
// at the same time (so they are n distinct pooled connections).
func poolSynchronous(t *testing.T, db *sql.DB, n int) []int {
	t.Helper()
	ctx := context.Background()
	var out []int
	for range n {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var v int
		if err := c.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&v); err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	return out
}

// TestSynchronousOnEveryConnection: every connection of both pools runs
// synchronous=FULL (2) by default, and NORMAL (1) only when asked for.
func TestSynchronousOnEveryConnection(t *testing.T) {
	for _, c := range []struct {
		mode string
		want int
	}{{"", 2}, {"full", 2}, {"FULL", 2}, {"normal", 1}} {
		s, err := Open(context.Background(), Config{DatabaseType: "sqlite3", ConnectionString: filepath.Join(t.TempDir(), "ds.sqlite3"), Synchronous: c.mode})
		if err != nil {
			t.Fatalf("mode %q: %v", c.mode, err)
		}
		w := poolSynchronous(t, s.w, 1)
		r := poolSynchronous(t, s.r, readPoolSize)
		s.Close()
		if len(r) != readPoolSize {
			t.Fatalf("mode %q: read %d connections, want %d", c.mode, len(r), readPoolSize)
		}
		for i, v := range append(w, r...) {
			if v != c.want {
				t.Errorf("mode %q: connection %d: PRAGMA synchronous = %d, want %d", c.mode, i, v, c.want)
			}
		}
	}
	_, err := Open(context.Background(), Config{DatabaseType: "sqlite3", ConnectionString: filepath.Join(t.TempDir(), "ds.sqlite3"), Synchronous: "off"})
	if err == nil || !strings.Contains(err.Error(), "unknown synchronous mode") {
		t.Fatalf("synchronous=off: %v, want an error", err)
	}
}

func (x suite) TestMigrationVersioning(t *testing.T) {
	f := x.newFixture(t)
	ctx := context.Background()
	ms, err := loadMigrations(migrationsFS, f.store.dialect.migrations)
	if err != nil {
		t.Fatal(err)
	}
	v, err := f.store.SchemaVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v != len(ms) || v < 1 {
		t.Fatalf("schema version = %d, want %d", v, len(ms))
	}

	// Reopening applies nothing and keeps data.
	if err := f.store.SetCAJournal(ctx, "a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	f.reopen(t)
	if v2, _ := f.store.SchemaVersion(ctx); v2 != v {
		t.Fatalf("version after reopen = %d, want %d", v2, v)
	}

	// A later binary's migration applies on top, in order.
	next := fstest.MapFS{}
	for _, m := range ms {
		next["m/"+m.name] = &fstest.MapFile{Data: []byte(m.sql)}
	}
	n := len(ms) + 1
	name := fmt.Sprintf("%04d_extra.sql", n)
	next["m/"+name] = &fstest.MapFile{Data: []byte("CREATE TABLE extra (x INTEGER); INSERT INTO extra VALUES (42);")}
	if err := f.store.migrate(ctx, next, "m"); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	var got int
	if err := f.store.r.QueryRowContext(ctx, "SELECT x FROM extra").Scan(&got); err != nil || got != 42 {
		t.Fatalf("extra migration not applied: %v %d", err, got)
	}
	if v3, _ := f.store.SchemaVersion(ctx); v3 != n {
		t.Fatalf("version = %d, want %d", v3, n)
	}

	// This binary refuses the newer database.
	if err := f.store.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = Open(ctx, f.cfg)
	wantErr(t, err, ErrSchemaTooNew)
	if !strings.Contains(err.Error(), fmt.Sprintf("version %d", n)) {
		t.Errorf("error %q does not name the database version", err)
	}
}

func TestLoadMigrationsRejectsGaps(t *testing.T) {
	fsys := fstest.MapFS{
		"m/0001_a.sql": &fstest.MapFile{Data: []byte("SELECT 1")},
		"m/0003_c.sql": &fstest.MapFile{Data: []byte("SELECT 1")},
	}
	if _, err := loadMigrations(fsys, "m"); err == nil {
		t.Fatal("gap accepted")
	}
	fsys = fstest.MapFS{"m/one.sql": &fstest.MapFile{Data: []byte("SELECT 1")}}
	if _, err := loadMigrations(fsys, "m"); err == nil {
		t.Fatal("unnumbered migration accepted")
	}
}

func TestRebind(t *testing.T) {
	pg := dialect{name: "postgres", numbered: true}
	got := pg.rebind("SELECT a FROM t WHERE x = ? AND y IN (?, ?)")
	if want := "SELECT a FROM t WHERE x = $1 AND y IN ($2, $3)"; got != want {
		t.Fatalf("rebind = %q, want %q", got, want)
	}
	if got := sqliteDialect.rebind("x = ?"); got != "x = ?" {
		t.Fatalf("sqlite rebind changed the query: %q", got)
	}
}

func (x suite) TestRestartPersistence(t *testing.T) {
	f := x.newFixture(t)
	ctx := context.Background()
	addBundles(t, f.store, "other.org")
	e := mustCreate(t, f.store, &datastore.Entry{SPIFFEID: "spiffe://td/w", ParentID: "spiffe://td/n", Selectors: sels("unix:uid:1"),
		DNSNames: []string{"a.example", "b.example"}, FederatesWith: []string{"other.org"}, Hint: "h", Admin: true, ExpiresAt: 99})[0]
	if _, err := f.store.CreateNode(ctx, &datastore.AttestedNode{SPIFFEID: "spiffe://td/n", AttestationType: "join_token",
		CertSerial: "1", Selectors: sels("jt:x")}); err != nil {
		t.Fatal(err)
	}
	if err := f.store.CreateJoinToken(ctx, &datastore.JoinToken{Hash: [32]byte{1}, ExpiresAt: 5}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.CreateBundle(ctx, &datastore.Bundle{TrustDomain: "td", X509Authorities: []datastore.X509Authority{{ASN1: []byte{1}}}}); err != nil {
		t.Fatal(err)
	}
	if err := f.store.SetCAJournal(ctx, "ca", []byte("journal")); err != nil {
		t.Fatal(err)
	}
	lastEv, _ := f.store.LastEntryEventID(ctx)

	f.reopen(t)

	got, err := f.store.GetEntry(ctx, e.ID)
	if err != nil {
		t.Fatal(err)
	}
	assertEntryEqual(t, got, e)
	if n, err := f.store.GetNode(ctx, "spiffe://td/n"); err != nil || len(n.Selectors) != 1 {
		t.Fatalf("node after restart: %v %+v", err, n)
	}
	if _, err := f.store.ConsumeJoinToken(ctx, [32]byte{1}); err != nil {
		t.Fatalf("token after restart: %v", err)
	}
	if b, err := f.store.GetBundle(ctx, "td"); err != nil || b.SequenceNumber != 1 {
		t.Fatalf("bundle after restart: %v %+v", err, b)
	}
	if j, err := f.store.GetCAJournal(ctx, "ca"); err != nil || string(j) != "journal" {
		t.Fatalf("journal after restart: %v %q", err, j)
	}
	if ev, _ := f.store.LastEntryEventID(ctx); ev != lastEv || ev == 0 {
		t.Fatalf("last entry event after restart = %d, want %d", ev, lastEv)
	}
}

// TestMigrationDialectsMatch: every dialect has the same migration
// versions, under the same names (a table added for one is added for all;
// see migrations/).
func TestMigrationDialectsMatch(t *testing.T) {
	dirs, err := fs.ReadDir(migrationsFS, "migrations")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string][]string{}
	for _, d := range []dialect{sqliteDialect, postgresDialect} {
		ms, err := loadMigrations(migrationsFS, d.migrations)
		if err != nil {
			t.Fatalf("%s: %v", d.name, err)
		}
		for _, m := range ms {
			names[d.name] = append(names[d.name], m.name)
		}
	}
	if len(dirs) != len(names) {
		t.Fatalf("migrations/ has %d dialect directories, the store knows %d dialects", len(dirs), len(names))
	}
	if !slices.Equal(names["sqlite3"], names["postgres"]) {
		t.Fatalf("migrations differ between dialects:\n sqlite:   %v\n postgres: %v", names["sqlite3"], names["postgres"])
	}
}

// TestPostgresReadReplica: with ro_connection_string, reads marked
// datastore.TolerateStale (admin listings) go to the replica, every other
// read and every write to the primary. Two databases of one cluster stand
// in for a primary and its replica.
func TestPostgresReadReplica(t *testing.T) {
	ctx := context.Background()
	primary, replica := pgtest.NewDatabase(t), pgtest.NewDatabase(t)
	rs, err := Open(ctx, Config{DatabaseType: "postgres", ConnectionString: replica})
	if err != nil {
		t.Fatal(err)
	}
	mustCreate(t, rs, &datastore.Entry{ID: "on-replica", SPIFFEID: "spiffe://td/r", ParentID: "spiffe://td/p", Selectors: sels("a:b")})
	rs.Close()

	s, err := Open(ctx, Config{DatabaseType: "postgres", ConnectionString: primary, ROConnectionString: replica})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mustCreate(t, s, &datastore.Entry{ID: "on-primary", SPIFFEID: "spiffe://td/w", ParentID: "spiffe://td/p", Selectors: sels("a:b")})
	ids := func(ctx context.Context) []string {
		es, _, err := s.ListEntries(ctx, datastore.EntryFilter{}, datastore.Page{})
		if err != nil {
			t.Fatal(err)
		}
		return entryIDs(es)
	}
	if got := ids(ctx); !slices.Equal(got, []string{"on-primary"}) {
		t.Errorf("ListEntries read %v, want the primary's entry", got)
	}
	stale := datastore.TolerateStale(ctx)
	if got := ids(stale); !slices.Equal(got, []string{"on-replica"}) {
		t.Errorf("ListEntries(TolerateStale) read %v, want the replica's entry", got)
	}
	if n, _ := s.CountEntries(stale, datastore.EntryFilter{}); n != 1 {
		t.Errorf("CountEntries(TolerateStale) = %d", n)
	}
	if _, err := s.GetEntry(ctx, "on-primary"); err != nil {
		t.Errorf("GetEntry on the primary: %v", err)
	}
	if ev, _ := s.LastEntryEventID(ctx); ev != 1 {
		t.Errorf("LastEntryEventID = %d, want the primary's 1", ev)
	}
}
