package entrycache_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // "pgx" driver, for the test's own connection

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/datastore/sqlstore"
	"github.com/sigil-spiffe/sigil/internal/server/entrycache"
	"github.com/sigil-spiffe/sigil/internal/testutil/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// pgFixture is a cache over a store on a real PostgreSQL, and a separate
// connection for the test to hold writers back with.
type pgFixture struct {
	fixture
	db *sql.DB
}

func newPGFixture(t *testing.T) *pgFixture {
	t.Helper()
	conn := pgtest.NewDatabase(t)
	clk := clock.NewFake(t0)
	st, err := sqlstore.Open(context.Background(), sqlstore.Config{DatabaseType: "postgres", ConnectionString: conn, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	db, err := sql.Open("pgx", conn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return &pgFixture{fixture: fixture{st: st, clk: clk, cache: entrycache.New(entrycache.Config{Store: st, Clock: clk})}, db: db}
}

// holdLock is the advisory lock a held writer waits for.
const holdLock = 7_000_001

// holdWriters makes every transaction that writes a row of journal whose
// column col names a "hold-..." entry, node or trust domain wait, after
// writing it (its event ID allocated), while the test holds the hold lock
// (hold): a server's write that commits late, after writes that began
// after it.
func (f *pgFixture) holdWriters(t *testing.T, journal, col string) {
	t.Helper()
	fn := "hold_" + journal
	if _, err := f.db.Exec(fmt.Sprintf(`CREATE FUNCTION %[1]s() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.%[2]s LIKE 'hold-%%' OR NEW.%[2]s LIKE '%%/hold-%%' THEN PERFORM pg_advisory_xact_lock_shared(%[3]d); END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER %[1]s AFTER INSERT ON %[4]s FOR EACH ROW EXECUTE FUNCTION %[1]s();`, fn, col, holdLock, journal)); err != nil {
		t.Fatal(err)
	}
}

// hold takes the hold lock until release (or the end of the test).
func (f *pgFixture) hold(t *testing.T) (release func()) {
	t.Helper()
	ctx := context.Background()
	conn, err := f.db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, fmt.Sprintf("SELECT pg_advisory_lock(%d)", holdLock)); err != nil {
		t.Fatal(err)
	}
	released := false
	release = func() {
		if released {
			return
		}
		released = true
		if _, err := conn.ExecContext(ctx, fmt.Sprintf("SELECT pg_advisory_unlock(%d)", holdLock)); err != nil {
			t.Error(err)
		}
		conn.Close()
	}
	t.Cleanup(release)
	return release
}

// waitHeld waits until n writers wait on the hold lock.
func (f *pgFixture) waitHeld(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var waiting int
		if err := f.db.QueryRow(fmt.Sprintf("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %d AND NOT granted", holdLock)).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d writers held, want %d", waiting, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// createHeld starts CreateEntries of e, which the hold keeps from
// committing; the returned channel yields its error once it commits.
func (f *pgFixture) createHeld(t *testing.T, e *datastore.Entry) <-chan error {
	done := make(chan error, 1)
	go func() {
		res, err := f.st.CreateEntries(context.Background(), []*datastore.Entry{e})
		if err == nil {
			err = res[0].Err
		}
		done <- err
	}()
	return done
}

// TestOutOfOrderCommitsPostgres: on PostgreSQL an entry write whose event
// ID is lower than a later write's commits after it (a slow transaction,
// or another server's). The cache sees the later one first and must still
// apply the earlier one when it commits, whether it was in flight during
// journal following or during Load.
func TestOutOfOrderCommitsPostgres(t *testing.T) {
	ctx := context.Background()
	f := newPGFixture(t)
	a1 := td + "/spire/agent/a1"
	f.node(t, a1, "a:1")
	if err := f.cache.Load(ctx); err != nil {
		t.Fatal(err)
	}

	// In flight while the cache follows the journal.
	f.holdWriters(t, "entry_events", "entry_id")
	release := f.hold(t)
	slow := f.createHeld(t, entry("hold-1", td+"/w/slow", a1, "unix:uid:1"))
	f.waitHeld(t, 1)
	f.create(t, entry("fast-1", td+"/w/fast", a1, "unix:uid:2"))
	if err := f.cache.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := authorized(t, f.cache, a1); !slices.Equal(got, []string{"fast-1"}) {
		t.Fatalf("before the slow write commits: %v, want [fast-1]", got)
	}
	release()
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
	if err := f.cache.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := authorized(t, f.cache, a1), []string{"fast-1", "hold-1"}; !slices.Equal(got, want) {
		t.Fatalf("after the slow write committed: %v, want %v (its event was skipped for good)", got, want)
	}

	// In flight while a second cache (another server starting) loads.
	release = f.hold(t)
	slow = f.createHeld(t, entry("hold-2", td+"/w/slow2", a1, "unix:uid:3"))
	f.waitHeld(t, 1)
	f.create(t, entry("fast-2", td+"/w/fast2", a1, "unix:uid:4"))
	second := entrycache.New(entrycache.Config{Store: f.st, Clock: f.clk})
	if err := second.Load(ctx); err != nil {
		t.Fatal(err)
	}
	release()
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
	if err := second.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := authorized(t, second, a1), []string{"fast-1", "fast-2", "hold-1", "hold-2"}; !slices.Equal(got, want) {
		t.Fatalf("cache loaded while a write was in flight: %v, want %v", got, want)
	}
}

// TestOutOfOrderBundleWritePostgres: a bundle write that commits after a
// later one (its journal ID lower) still wakes the subscribers, in
// journal following and across a Load.
func TestOutOfOrderBundleWritePostgres(t *testing.T) {
	ctx := context.Background()
	f := newPGFixture(t)
	a1 := td + "/spire/agent/a1"
	f.node(t, a1, "a:1")
	if err := f.cache.Load(ctx); err != nil {
		t.Fatal(err)
	}
	ch, cancel := f.cache.Subscribe(mustID(a1))
	defer cancel()
	drain := func() bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	drain()
	setBundle := func(td string) <-chan error {
		done := make(chan error, 1)
		go func() {
			_, err := f.st.SetBundle(context.Background(), &datastore.Bundle{TrustDomain: td})
			done <- err
		}()
		return done
	}

	f.holdWriters(t, "bundle_events", "trust_domain")
	for _, viaLoad := range []bool{false, true} {
		release := f.hold(t)
		slow := setBundle(fmt.Sprintf("hold-%v.org", viaLoad))
		f.waitHeld(t, 1)
		if err := <-setBundle(fmt.Sprintf("fast-%v.org", viaLoad)); err != nil {
			t.Fatal(err)
		}
		c := f.cache
		if viaLoad {
			c = entrycache.New(entrycache.Config{Store: f.st, Clock: f.clk})
			if err := c.Load(ctx); err != nil {
				t.Fatal(err)
			}
			cancel()
			ch, cancel = c.Subscribe(mustID(a1))
		}
		if err := c.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		drain()
		release()
		if err := <-slow; err != nil {
			t.Fatal(err)
		}
		if err := c.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if !drain() {
			t.Fatalf("viaLoad=%v: a bundle write that committed out of order woke nobody", viaLoad)
		}
	}
}

// TestOutOfOrderBanPostgres: a ban committed after a later node write
// (another server's, say) reaches a cache that loaded in between: the
// agent check sees the node banned.
func TestOutOfOrderBanPostgres(t *testing.T) {
	ctx := context.Background()
	f := newPGFixture(t)
	held := td + "/spire/agent/hold-1"
	f.node(t, held, "a:1")
	f.holdWriters(t, "node_events", "spiffe_id")
	release := f.hold(t)
	ban := make(chan error, 1)
	go func() {
		_, err := f.st.UpdateNode(context.Background(), &datastore.AttestedNode{SPIFFEID: held}, &datastore.NodeMask{CertSerial: true, NewCertSerial: true})
		ban <- err
	}()
	f.waitHeld(t, 1)
	f.node(t, td+"/spire/agent/other", "a:1")
	if err := f.cache.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := f.cache.GetNode(ctx, held); err != nil || n.Banned() {
		t.Fatalf("before the ban commits: %+v, %v", n, err)
	}
	release()
	if err := <-ban; err != nil {
		t.Fatal(err)
	}
	if err := f.cache.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := f.cache.GetNode(ctx, held); err != nil || !n.Banned() {
		t.Fatalf("after the ban committed: %+v, %v; want banned", n, err)
	}
}
