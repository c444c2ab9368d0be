// Package postgres runs real sigil-server and sigil-agent processes with
// the server's datastore on a real PostgreSQL (pgtest: a private cluster
// for the test binary; skipped without PostgreSQL outside CI).
package postgres

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/datastore/sqlstore"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, testutil.Cleanup)) }

const deadline = 30 * time.Second

var uidSelector = "unix:uid:" + strconv.Itoa(os.Getuid())

// TestServerOnPostgres: a sigil-server process keeps its state in
// PostgreSQL (no SQLite file): an agent attests with a join token, its
// workload gets its X509-SVID; the server restarts on the same database
// and CA, and an entry created afterwards reaches the workload. The
// attested agent and the entries are rows of the database, and no log
// line repeats the connection string's password.
func TestServerOnPostgres(t *testing.T) {
	ds := pgtest.DataStore(t)
	conn := ds.Data["connection_string"].(string)
	srv := testutil.StartServer(t, testutil.ServerConfig{DataStore: ds})
	agentID := srv.ID("/agent/pg-1")
	a := testutil.StartAgent(t, testutil.AgentFor(t, srv, "/agent/pg-1", ""))

	first := srv.ID("/before-restart")
	srv.Admin(t).CreateEntry(t, first, agentID, uidSelector)
	before := testutil.RequireSVID(t, a.SocketAddr(), first, deadline)

	if _, err := os.Stat(filepath.Join(srv.Config.DataDir, "datastore.sqlite3")); !os.IsNotExist(err) {
		t.Errorf("a SQLite datastore beside a PostgreSQL one (stat: %v)", err)
	}

	bundle := srv.Admin(t).BundlePEM(t)
	srv.Stop(t)
	srv.Start(t)
	// Same CA after the restart: the CA journal is in the database.
	if again := srv.Admin(t).BundlePEM(t); string(again) != string(bundle) {
		t.Errorf("the trust bundle changed across the restart")
	}
	second := srv.ID("/after-restart")
	srv.Admin(t).CreateEntry(t, second, agentID, uidSelector)
	testutil.RequireSVID(t, a.SocketAddr(), second, deadline)
	if again := testutil.RequireSVID(t, a.SocketAddr(), first, deadline); again.Certificates[0].SerialNumber.Cmp(before.Certificates[0].SerialNumber) != 0 {
		t.Logf("the workload's first SVID was renewed meanwhile")
	}
	agents := srv.Admin(t).ListAgents(t)
	if len(agents) != 1 {
		t.Fatalf("%d attested agents, want 1", len(agents))
	}
	nodeID := "spiffe://" + agents[0].Id.TrustDomain + agents[0].Id.Path

	ctx := context.Background()
	s, err := sqlstore.Open(ctx, sqlstore.Config{DatabaseType: "postgres", ConnectionString: conn})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n, err := s.GetNode(ctx, nodeID); err != nil || n.AttestationType != "join_token" {
		t.Errorf("attested agent in PostgreSQL: %+v, %v", n, err)
	}
	if n, err := s.CountEntries(ctx, datastore.EntryFilter{ByParentID: agentID.String()}); err != nil || n != 2 {
		t.Errorf("entries in PostgreSQL: %d, %v; want 2", n, err)
	}

	password := passwordOf(t, conn)
	for _, p := range []*testutil.Process{srv.Proc} {
		b, err := os.ReadFile(p.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), password) {
			t.Errorf("%s's log repeats the database password", p.Name)
		}
		if !strings.Contains(string(b), "Datastore opened") {
			t.Errorf("%s's log has no \"Datastore opened\" line", p.Name)
		}
	}
}

func passwordOf(t *testing.T, conn string) string {
	for _, kv := range strings.Fields(conn) {
		if v, ok := strings.CutPrefix(kv, "password="); ok && len(v) >= 16 {
			return v
		}
	}
	t.Fatalf("no password in the test connection string")
	return ""
}
