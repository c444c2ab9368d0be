package pgtest_test

import (
	"context"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/sigil-spiffe/sigil/internal/testutil/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// TestDatabases: two tests' databases on the shared cluster are separate,
// reachable over TCP and the unix socket, and need the password.
func TestDatabases(t *testing.T) {
	c := pgtest.Shared(t)
	ctx := context.Background()
	a, b := c.CreateDatabase(t, "template0"), c.CreateDatabase(t, "template0")
	if err := c.Exec(ctx, a, "CREATE TABLE x (v int); INSERT INTO x VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, b, "SELECT * FROM x"); err == nil {
		t.Fatal("table of database a visible in database b")
	}
	for _, cs := range []string{c.ConnString(a), c.SocketConnString(a)} {
		conn, err := pgx.Connect(ctx, cs)
		if err != nil {
			t.Fatal(err)
		}
		var v int
		if err := conn.QueryRow(ctx, "SELECT v FROM x").Scan(&v); err != nil || v != 1 {
			t.Fatalf("read back %d, %v", v, err)
		}
		conn.Close(ctx)
	}
	cfg, err := pgx.ParseConfig(c.ConnString(a))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Password = "wrong"
	if conn, err := pgx.ConnectConfig(ctx, cfg); err == nil {
		conn.Close(ctx)
		t.Fatal("connected with a wrong password")
	}
	if c.Version == "" {
		t.Error("server version unknown")
	}
	t.Logf("PostgreSQL %s on port %d", c.Version, c.Port)
}

// TestOwnCluster: a cluster started for one test is stopped, and its
// directory removed, when the test ends.
func TestOwnCluster(t *testing.T) {
	var dir string
	t.Run("cluster", func(t *testing.T) {
		c := pgtest.Start(t, pgtest.Options{})
		dir = c.Dir
		if err := c.Exec(context.Background(), "postgres", "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	})
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("cluster directory %s left behind: %v", dir, err)
	}
}

// TestPrivateTMPDIR: as root, a TMPDIR the postgres user cannot reach
// (under a 0700 directory) does not stop the cluster.
func TestPrivateTMPDIR(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root runs the cluster as another user")
	}
	// Short, so that the length rule does not pick /tmp anyway.
	private, err := os.MkdirTemp("/tmp", "p") // 0700
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(private) })
	t.Setenv("TMPDIR", private)
	c := pgtest.Start(t, pgtest.Options{})
	if err := c.Exec(context.Background(), "postgres", "SELECT 1"); err != nil {
		t.Fatal(err)
	}
}
