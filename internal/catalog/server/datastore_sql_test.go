package server_test

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	servercatalog "github.com/sigil-spiffe/sigil/internal/catalog/server"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/datastore/sqlstore"
	"github.com/sigil-spiffe/sigil/internal/testutil/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// TestPostgresDataStore: DataStore "sql" with SPIRE's PostgreSQL keys
// parses and builds a store on a real PostgreSQL.
func TestPostgresDataStore(t *testing.T) {
	conn := pgtest.NewDatabase(t)
	src := `server {
    trust_domain = "example.org"
    data_dir = "./data"
}
plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "postgres"
            connection_string = "` + conn + `"
            ro_connection_string = "` + conn + `"
            max_open_conns = 7
            max_idle_conns = 3
            conn_max_lifetime = "1h"
        }
    }
    KeyManager "memory" {}
}
`
	p, err := parse(t, src)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := p.DataStore().Build(context.Background(), servercatalog.DataStoreDeps{})
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	s, ok := ds.(*sqlstore.Store)
	if !ok || s.DatabaseType() != "postgres" {
		t.Fatalf("built %T", ds)
	}
	if err := ds.SetCAJournal(context.Background(), "x", []byte("y")); err != nil {
		t.Fatal(err)
	}
	st := s.PoolStats()
	if st.MaxOpenConnections != 7 {
		t.Errorf("max_open_conns: pool allows %d", st.MaxOpenConnections)
	}
}

// TestPostgresDataStoreUnreachable: Parse (validate) does not connect;
// Build (run) fails, naming the target but not the password.
func TestPostgresDataStoreUnreachable(t *testing.T) {
	cfg := config.DefaultServer()
	cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")
	cfg.Plugins = []config.Plugin{
		config.NewPlugin("DataStore", "sql", map[string]any{"database_type": "postgres",
			"connection_string": "host=127.0.0.1 port=1 dbname=sigil user=sigil password=hunter2 connect_timeout=5"}),
		config.NewPlugin("KeyManager", "memory", nil),
	}
	p, err := servercatalog.Parse(cfg)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	_, err = p.DataStore().Build(context.Background(), servercatalog.DataStoreDeps{})
	wantErr(t, err, `DataStore "sql"`, "host=127.0.0.1 port=1 dbname=sigil user=sigil")
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error %q repeats the password", err)
	}
}

// TestPostgresExampleConf: the commented PostgreSQL DataStore of
// conf/server/server.conf, uncommented with every optional setting in
// place of the SQLite one, parses (validate's check: no connection).
func TestPostgresExampleConf(t *testing.T) {
	src, err := os.ReadFile("../../../conf/server/server.conf")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(src), "\n")
	start := slices.Index(lines, `    # DataStore "sql" {`)
	sqlite := slices.Index(lines, `    DataStore "sql" {`)
	if start < 0 || sqlite < 0 {
		t.Fatal(`no DataStore "sql" and commented PostgreSQL alternative in conf/server/server.conf`)
	}
	for i := start; ; i++ {
		l := lines[i]
		if !strings.HasPrefix(l, "    #") {
			t.Fatalf("the commented block ends without its closing brace at line %d", i+1)
		}
		l = "    " + strings.TrimPrefix(strings.TrimPrefix(l, "    #"), " ")
		if strings.HasPrefix(strings.TrimSpace(l), "# ") && strings.Contains(l, " = ") {
			l = strings.Replace(l, "# ", "", 1)
		}
		lines[i] = l
		if l == "    }" {
			break
		}
	}
	end := sqlite + slices.Index(lines[sqlite:], "    }")
	lines = slices.Delete(lines, sqlite, end+1)
	conf := strings.Join(lines, "\n")
	for _, k := range []string{`database_type = "postgres"`, "ro_connection_string = ", "max_open_conns = ", "max_idle_conns = ", "conn_max_lifetime = "} {
		if !strings.Contains(conf, "\n            "+k) {
			t.Errorf("%s is not set in the uncommented block", k)
		}
	}
	p, err := parse(t, conf)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(p.Names(), ", "), `DataStore "sql"`) {
		t.Fatalf("plugins %s", strings.Join(p.Names(), ", "))
	}
}
