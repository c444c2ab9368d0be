package server_test

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	servercatalog "github.com/sigil-spiffe/sigil/internal/catalog/server"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/keys"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// confWith is a valid 13-line server.conf; tail follows it (from line 14).
func confWith(tail string) string {
	return `server {
    trust_domain = "example.org"
    data_dir = "./data"
}
plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = "ds.sqlite3"
        }
    }
    KeyManager "memory" {}
}
` + tail
}

func parse(t *testing.T, src string) (*servercatalog.Plugins, error) {
	t.Helper()
	cfg, err := config.ParseServer("server.conf", []byte(src))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return servercatalog.Parse(cfg)
}

func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one containing %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not contain %q", err, p)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	cases := []struct {
		name string
		src  string
		want []string
	}{
		{"unknown plugin_data key",
			confWith("plugins {\n  UpstreamAuthority \"disk\" {\n    plugin_data {\n      cert_file_path = \"c\"\n      key_file_path = \"k\"\n      mode = \"0600\"\n    }\n  }\n}\n"),
			[]string{`server.conf:19: unknown key "mode" in plugin_data of plugin UpstreamAuthority "disk"`}},
		{"unsupported sql plugin_data key",
			strings.Replace(confWith(""), `connection_string = "ds.sqlite3"`, "connection_string = \"ds.sqlite3\"\n            disable_migration = true", 1),
			[]string{`server.conf:10: unsupported key "disable_migration" in plugin_data of plugin DataStore "sql": a SPIRE option Sigil does not implement`}},
		{"pool size on sqlite",
			strings.Replace(confWith(""), `connection_string = "ds.sqlite3"`, "connection_string = \"ds.sqlite3\"\n            max_open_conns = 10", 1),
			[]string{`server.conf:10: plugin DataStore "sql": max_open_conns applies to database_type "postgres" only`}},
		{"ro_connection_string on sqlite",
			strings.Replace(confWith(""), `connection_string = "ds.sqlite3"`, "connection_string = \"ds.sqlite3\"\n            ro_connection_string = \"ro.sqlite3\"", 1),
			[]string{`server.conf:10: plugin DataStore "sql": ro_connection_string applies to database_type "postgres" only`}},
		{"plugin_data value of the wrong type",
			strings.Replace(confWith(""), `connection_string = "ds.sqlite3"`, `connection_string = ["ds.sqlite3"]`, 1),
			[]string{`server.conf:9: invalid value for "connection_string" in plugin_data of plugin DataStore "sql": expected a string, got a list`}},
		{"unknown plugin",
			confWith("plugins {\n  NodeAttestor \"nonesuch\" {\n    plugin_data {}\n  }\n}\n"),
			[]string{`server.conf:15: unknown plugin NodeAttestor "nonesuch": Sigil's built-in NodeAttestor plugins are: `, "join_token"}},
		{"unknown DataStore",
			strings.Replace(confWith(""), `DataStore "sql"`, `DataStore "mysql"`, 1),
			[]string{`server.conf:6: unknown plugin DataStore "mysql": Sigil's built-in DataStore plugins are: sql`,
				`exactly one DataStore plugin must be configured`}},
		{"unknown plugin type",
			confWith("plugins {\n  Cache \"redis\" {}\n}\n"),
			[]string{`server.conf:15: unknown plugin type "Cache" (plugin Cache "redis"): known types are DataStore, KeyManager, NodeAttestor, UpstreamAuthority`}},
		{"agent plugin type",
			confWith("plugins {\n  WorkloadAttestor \"unix\" {}\n}\n"),
			[]string{`server.conf:15: unknown plugin type "WorkloadAttestor"`}},
		{"unsupported plugin type",
			confWith("plugins {\n  Notifier \"k8sbundle\" {}\n}\n"),
			[]string{`server.conf:15: unsupported plugin type Notifier (plugin Notifier "k8sbundle"): a SPIRE plugin type Sigil does not implement`}},
		{"second KeyManager",
			confWith("plugins {\n  KeyManager \"disk\" {\n    plugin_data { keys_path = \"k\" }\n  }\n}\n"),
			[]string{`server.conf:15: plugin KeyManager "disk": only one KeyManager plugin may be configured ("memory" is on line 12)`}},
		{"two upstream authorities",
			confWith("plugins {\n  UpstreamAuthority \"disk\" {\n    plugin_data {\n      cert_file_path = \"c\"\n      key_file_path = \"k\"\n    }\n  }\n  UpstreamAuthority \"spire\" {}\n}\n"),
			[]string{`server.conf:21: plugin UpstreamAuthority "spire": only one UpstreamAuthority plugin may be configured ("disk" is on line 15)`}},
		{"mysql",
			strings.Replace(confWith(""), `"sqlite3"`, `"mysql"`, 1),
			[]string{`server.conf:8: plugin DataStore "sql": database_type "mysql" is not supported (want "sqlite3" or "postgres")`}},
		{"postgres connection string",
			postgresConf(`connection_string = "host=db port=x password=hunter2"`),
			[]string{`server.conf:9: plugin DataStore "sql": connection_string does not parse: `}},
		{"postgres ro_connection_string",
			postgresConf(`ro_connection_string = "postgres://u:hunter2@db:5432:1/x"`),
			[]string{`server.conf:10: plugin DataStore "sql": ro_connection_string does not parse: `}},
		{"postgres pool size",
			postgresConf(`max_idle_conns = -1`),
			[]string{`server.conf:10: plugin DataStore "sql": max_idle_conns = -1 is out of range (0 to 10000)`}},
		{"postgres conn_max_lifetime",
			postgresConf(`conn_max_lifetime = "forever"`),
			[]string{`server.conf:10: invalid value for "conn_max_lifetime" in plugin_data of plugin DataStore "sql": "forever" is not a duration`}},
		{"postgres sqlite_synchronous",
			postgresConf(`sqlite_synchronous = "full"`),
			[]string{`server.conf:10: plugin DataStore "sql": sqlite_synchronous applies to database_type "sqlite3" only`}},
		{"no DataStore",
			"server {\n trust_domain = \"a.org\"\n data_dir = \"d\"\n}\nplugins {\n KeyManager \"memory\" {}\n}\n",
			[]string{`server.conf: exactly one DataStore plugin must be configured: DataStore "sql"`}},
		{"no KeyManager",
			strings.Replace(confWith(""), `KeyManager "memory" {}`, "", 1),
			[]string{`server.conf: exactly one KeyManager plugin must be configured: KeyManager "disk" or KeyManager "memory"`}},
		{"no connection string",
			strings.Replace(confWith(""), `connection_string = "ds.sqlite3"`, "", 1),
			[]string{`server.conf:7: plugin DataStore "sql": connection_string must be configured`}},
		{"no database type",
			strings.Replace(confWith(""), `database_type = "sqlite3"`, "", 1),
			[]string{`server.conf:7: plugin DataStore "sql": database_type must be configured`}},
		{"bad connection string",
			strings.Replace(confWith(""), `"ds.sqlite3"`, `"file:ds.sqlite3?mode=memory"`, 1),
			[]string{`server.conf:9: plugin DataStore "sql": connection_string mode=memory is not supported`}},
		{"sqlite_synchronous off",
			strings.Replace(confWith(""), `connection_string = "ds.sqlite3"`, "connection_string = \"ds.sqlite3\"\n            sqlite_synchronous = \"off\"", 1),
			[]string{`server.conf:10: plugin DataStore "sql": sqlite_synchronous "off" is not supported (want "full" or "normal")`}},
		{"disk keys_path",
			strings.Replace(confWith(""), `KeyManager "memory" {}`, `KeyManager "disk" {}`, 1),
			[]string{`server.conf:12: plugin KeyManager "disk": keys_path must be configured`}},
		{"memory has no settings",
			strings.Replace(confWith(""), `KeyManager "memory" {}`, `KeyManager "memory" { plugin_data { keys_path = "k" } }`, 1),
			[]string{`server.conf:12: unknown key "keys_path" in plugin_data of plugin KeyManager "memory"`}},
		{"join_token has no settings",
			confWith("plugins {\n  NodeAttestor \"join_token\" {\n    plugin_data {\n      ttl = 3\n    }\n  }\n}\n"),
			[]string{`server.conf:17: unknown key "ttl" in plugin_data of plugin NodeAttestor "join_token"`}},
		{"upstream disk without key",
			confWith("plugins {\n UpstreamAuthority \"disk\" {\n  plugin_data { cert_file_path = \"c\" }\n }\n}\n"),
			[]string{`server.conf:16: plugin UpstreamAuthority "disk": key_file_path must be configured`}},
		{"upstream spire without port",
			confWith("plugins {\n UpstreamAuthority \"spire\" {\n  plugin_data {\n   server_address = \"up\"\n   workload_api_socket = \"/s\"\n  }\n }\n}\n"),
			[]string{`server.conf:16: plugin UpstreamAuthority "spire": server_port must be configured`}},
		{"upstream spire port 0",
			confWith("plugins {\n UpstreamAuthority \"spire\" {\n  plugin_data {\n   server_address = \"up\"\n   server_port = 0\n   workload_api_socket = \"/s\"\n  }\n }\n}\n"),
			[]string{`server.conf:18: plugin UpstreamAuthority "spire": server_port 0 out of range 1..65535`}},
		{"upstream spire experimental",
			confWith("plugins {\n UpstreamAuthority \"spire\" {\n  plugin_data {\n   server_address = \"up\"\n   server_port = 1\n   workload_api_socket = \"/s\"\n   experimental { require_pq_kem = true }\n  }\n }\n}\n"),
			[]string{`server.conf:20: unsupported block "experimental" in plugin_data of plugin UpstreamAuthority "spire"`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := parse(t, c.src)
			wantErr(t, err, c.want...)
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error %q repeats a password", err)
			}
		})
	}
}

// postgresConf is confWith("") with database_type "postgres", a valid
// connection_string, and line (one key = value) after it, on line 10 (it
// replaces the connection_string line when it sets connection_string).
func postgresConf(line string) string {
	src := strings.Replace(confWith(""), `"sqlite3"`, `"postgres"`, 1)
	if strings.HasPrefix(line, "connection_string") {
		return strings.Replace(src, `connection_string = "ds.sqlite3"`, line, 1)
	}
	return strings.Replace(src, `connection_string = "ds.sqlite3"`, "connection_string = \"dbname=sigil host=db.example user=sigil\"\n            "+line, 1)
}

// TestParseReportsEveryError: one run names every problem of the plugins
// section, in file order.
func TestParseReportsEveryError(t *testing.T) {
	src := confWith("plugins {\n  NodeAttestor \"nonesuch\" {}\n  UpstreamAuthority \"disk\" {\n    plugin_data {\n      cert = \"c\"\n    }\n  }\n}\n")
	src = strings.Replace(src, `"sqlite3"`, `"mysql"`, 1)
	_, err := parse(t, src)
	want := []string{
		`server.conf:8: plugin DataStore "sql": database_type "mysql" is not supported (want "sqlite3" or "postgres")`,
		`server.conf:15: unknown plugin NodeAttestor "nonesuch"`,
		`server.conf:17: plugin UpstreamAuthority "disk": cert_file_path must be configured`,
		`server.conf:17: plugin UpstreamAuthority "disk": key_file_path must be configured`,
		`server.conf:18: unknown key "cert" in plugin_data of plugin UpstreamAuthority "disk"`,
	}
	wantErr(t, err, want...)
	if n := len(strings.Split(err.Error(), "\n")); n != len(want) {
		t.Errorf("%d errors, want %d:\n%v", n, len(want), err)
	}
}

func TestParseAndBuild(t *testing.T) {
	dir := t.TempDir()
	cfg := config.DefaultServer()
	cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")
	cfg.Plugins = []config.Plugin{
		config.NewPlugin("DataStore", "sql", map[string]any{"database_type": "sqlite3", "connection_string": filepath.Join(dir, "ds.sqlite3"), "sqlite_synchronous": "normal"}),
		config.NewPlugin("KeyManager", "disk", map[string]any{"keys_path": filepath.Join(dir, "keys")}),
		config.NewPlugin("NodeAttestor", "join_token", nil),
	}
	p, err := servercatalog.Parse(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(p.Names(), ", "); got != `DataStore "sql", KeyManager "disk", NodeAttestor "join_token"` {
		t.Errorf("names: %s", got)
	}
	if _, ok := p.UpstreamAuthority(); ok {
		t.Error("an UpstreamAuthority without one configured")
	}
	ctx := context.Background()
	ds, err := p.DataStore().Build(ctx, servercatalog.DataStoreDeps{})
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	km, err := p.KeyManager().Build(ctx, servercatalog.KeyManagerDeps{})
	if err != nil {
		t.Fatal(err)
	}
	if d, ok := km.(*keys.Disk); !ok || d.Dir() != filepath.Join(dir, "keys") {
		t.Errorf("key manager %T", km)
	}
	ats, err := p.NodeAttestors(ctx, servercatalog.NodeAttestorDeps{TrustDomain: cfg.TrustDomain, Store: ds})
	if err != nil {
		t.Fatal(err)
	}
	if len(ats) != 1 || ats["join_token"] == nil {
		t.Errorf("node attestors %v", ats)
	}

	// A configuration built in code has no file to name.
	cfg.Plugins = nil
	_, err = servercatalog.Parse(cfg)
	wantErr(t, err, "exactly one DataStore plugin must be configured")
	if strings.HasPrefix(err.Error(), ":") {
		t.Errorf("error %q names no file but starts with ':'", err)
	}
}

func TestBuildErrorsNameThePlugin(t *testing.T) {
	p, err := parse(t, confWith("plugins {\n  UpstreamAuthority \"disk\" {\n    plugin_data {\n      cert_file_path = \"/nonexistent/c\"\n      key_file_path = \"/nonexistent/k\"\n    }\n  }\n}\n"))
	if err != nil {
		t.Fatal(err)
	}
	u, ok := p.UpstreamAuthority()
	if !ok {
		t.Fatal("no upstream")
	}
	_, err = u.Build(context.Background(), servercatalog.UpstreamAuthorityDeps{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org")})
	wantErr(t, err, `UpstreamAuthority "disk": `, "/nonexistent/c")
}

func TestBuiltIns(t *testing.T) {
	b := servercatalog.BuiltIns()
	for typ, want := range map[string][]string{
		"DataStore":         {"sql"},
		"KeyManager":        {"disk", "memory"},
		"UpstreamAuthority": {"disk", "spire"},
	} {
		if !slices.Equal(b[typ], want) {
			t.Errorf("%s: %q, want %q", typ, b[typ], want)
		}
	}
	if !slices.Contains(b["NodeAttestor"], "join_token") {
		t.Errorf("NodeAttestor: %q", b["NodeAttestor"])
	}
}

// TestSPIREQuickstartServer: the server.conf of SPIRE's quickstart runs
// unchanged.
func TestSPIREQuickstartServer(t *testing.T) {
	src := `server {
    bind_address = "127.0.0.1"
    bind_port = "8081"
    socket_path = "/tmp/spire-server/private/api.sock"
    trust_domain = "example.org"
    data_dir = "./.data"
    log_level = "DEBUG"
    ca_key_type = "rsa-2048"
}

plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = "./.data/datastore.sqlite3"
        }
    }
    NodeAttestor "join_token" {
        plugin_data {
        }
    }
    KeyManager "memory" {
        plugin_data = {}
    }
    UpstreamAuthority "disk" {
        plugin_data {
            key_file_path = "./conf/server/dummy_upstream_ca.key"
            cert_file_path = "./conf/server/dummy_upstream_ca.crt"
        }
    }
}
`
	p, err := parse(t, src)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(p.Names(), ", "); got != `DataStore "sql", KeyManager "memory", UpstreamAuthority "disk", NodeAttestor "join_token"` {
		t.Errorf("names: %s", got)
	}
}

// TestExampleConf: conf/server/server.conf passes the catalog.
func TestExampleConf(t *testing.T) {
	t.Chdir("../../..")
	cfg, err := config.LoadServer(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := servercatalog.Parse(cfg); err != nil {
		t.Fatalf("%s: %v", cfg.Path, err)
	}
}

// TestREADMEServerPlugins: the plugins block of the README's "Server
// plugins" section parses, and its table lists every built-in plugin.
func TestREADMEServerPlugins(t *testing.T) {
	readme, err := os.ReadFile("../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(readme), "### Server plugins\n")
	if !ok {
		t.Fatal("no Server plugins section")
	}
	sec, _, _ = strings.Cut(sec, "\n### ")
	_, block, ok := strings.Cut(sec, "```hcl\n")
	if !ok {
		t.Fatal("no hcl block in the Server plugins section")
	}
	block, _, _ = strings.Cut(block, "```")
	// The directories it names are read by the parse: made here.
	dir := t.TempDir()
	block = regexp.MustCompile(`(?m)^(\s*)(ek_ca_path|ek_hash_path) = "[^"]*"`).ReplaceAllStringFunc(block, func(l string) string {
		key, _, _ := strings.Cut(strings.TrimSpace(l), " ")
		p := filepath.Join(dir, key)
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if key == "ek_ca_path" {
			testca.WriteCertsPEM(t, filepath.Join(p, "ca.pem"), testca.New(t).Cert)
		}
		return strings.Replace(l, l[strings.Index(l, `"`):], strconv.Quote(p), 1)
	})
	if _, err := parse(t, confWith(block)); err != nil {
		t.Errorf("README block: %v", err)
	}
	for typ, names := range servercatalog.BuiltIns() {
		for _, n := range names {
			if !regexp.MustCompile("(?m)^\\| `" + typ + "` \\|.*`\"" + regexp.QuoteMeta(n) + "\"`").MatchString(sec) {
				t.Errorf("README's server plugin table does not list %s %q", typ, n)
			}
		}
	}
}
