package config

import (
	"crypto/x509/pkix"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/keys"
)

// A full server.conf in the shape of SPIRE's documented examples, using every
// option Sigil supports.
const fullServerConf = `server {
    bind_address = "127.0.0.1"
    bind_port = "9081"
    socket_path = "/run/sigil/server.sock"
    trust_domain = "example.org"
    data_dir = "/var/lib/sigil/server"
    log_level = "DEBUG"
    log_format = "json"
    log_file = "/var/log/sigil-server.log"
    ca_ttl = "168h"
    default_x509_svid_ttl = "2h"
    default_jwt_svid_ttl = "10m"
    agent_ttl = "72h"
    ca_key_type = "EC-P384"
    jwt_key_type = "rsa-2048"
    jwt_issuer = "https://oidc.example.org"
    ca_subject = {
        country = ["DE", "FR"],
        organization = ["Example"],
        common_name = "Example CA",
    }
    ratelimit {
        attestation = false
        signing = true
    }
}

plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "postgres"
            connection_string = "dbname=sigil host=127.0.0.1 sslmode=disable"
        }
    }

    KeyManager "disk" {
        plugin_data = {
            keys_path = "/var/lib/sigil/server/keys.json"
        }
    }

    NodeAttestor "join_token" {
        plugin_data {
        }
    }

    UpstreamAuthority "disk" {
        plugin_data {
            cert_file_path = "/etc/sigil/upstream.crt"
            key_file_path = "/etc/sigil/upstream.key"
            bundle_file_path = "/etc/sigil/upstream-bundle.crt"
        }
    }
}

health_checks {
    listener_enabled = true
    bind_address = "0.0.0.0"
    bind_port = "8080"
    live_path = "/alive"
    ready_path = "/isready"
}
`

// minimalServerConf is the smallest valid file: everything else defaults.
const minimalServerConf = `server {
    trust_domain = "example.org"
    data_dir = "./data"
}
plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = "./data/datastore.sqlite3"
        }
    }
    KeyManager "memory" {}
}
`

func TestParseServerFull(t *testing.T) {
	s, err := ParseServer("server.conf", []byte(fullServerConf))
	if err != nil {
		t.Fatal(err)
	}
	want := &Server{
		Path:               "server.conf",
		BindAddress:        "127.0.0.1",
		BindPort:           9081,
		SocketPath:         "/run/sigil/server.sock",
		DataDir:            "/var/lib/sigil/server",
		LogLevel:           "DEBUG",
		LogFormat:          "json",
		LogFile:            "/var/log/sigil-server.log",
		CATTL:              168 * time.Hour,
		DefaultX509SVIDTTL: 2 * time.Hour,
		DefaultJWTSVIDTTL:  10 * time.Minute,
		AgentTTL:           72 * time.Hour,
		CAKeyType:          keys.ECP384,
		JWTKeyType:         keys.RSA2048,
		JWTIssuer:          "https://oidc.example.org",
		CASubject:          pkix.Name{Country: []string{"DE", "FR"}, Organization: []string{"Example"}, CommonName: "Example CA"},
		RateLimit:          RateLimit{Attestation: false, Signing: true},
		HealthChecks:       HealthChecks{ListenerEnabled: true, BindAddress: "0.0.0.0", BindPort: 8080, LivePath: "/alive", ReadyPath: "/isready"},
	}
	if s.TrustDomain.Name() != "example.org" {
		t.Errorf("TrustDomain = %q", s.TrustDomain)
	}
	want.TrustDomain = s.TrustDomain
	wantPlugins(t, s.Plugins, `DataStore "sql" server.conf:29`, `KeyManager "disk" server.conf:36`,
		`NodeAttestor "join_token" server.conf:42`, `UpstreamAuthority "disk" server.conf:47`)
	want.Plugins = s.Plugins
	if !reflect.DeepEqual(s, want) {
		t.Errorf("got  %+v\nwant %+v", s, want)
	}
}

func TestParseServerDefaults(t *testing.T) {
	s, err := ParseServer("server.conf", []byte(minimalServerConf))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"bind_address", s.BindAddress, "0.0.0.0"},
		{"bind_port", s.BindPort, 8081},
		{"socket_path", s.SocketPath, "/tmp/spire-server/private/api.sock"},
		{"log_level", s.LogLevel, "INFO"},
		{"log_format", s.LogFormat, "text"},
		{"log_file", s.LogFile, ""},
		{"ca_ttl", s.CATTL, 24 * time.Hour},
		{"default_x509_svid_ttl", s.DefaultX509SVIDTTL, time.Hour},
		{"default_jwt_svid_ttl", s.DefaultJWTSVIDTTL, 5 * time.Minute},
		{"agent_ttl", s.AgentTTL, time.Hour},
		{"ca_key_type", s.CAKeyType, keys.ECP256},
		{"jwt_key_type", s.JWTKeyType, keys.ECP256},
		{"ca_subject", s.CASubject, pkix.Name{Country: []string{"US"}, Organization: []string{"SPIFFE"}}},
		{"ratelimit", s.RateLimit, RateLimit{Attestation: true, Signing: true}},
		{"health_checks", s.HealthChecks, HealthChecks{BindAddress: "localhost", BindPort: 80, LivePath: "/live", ReadyPath: "/ready"}},
		{"data_dir", s.DataDir, "./data"},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	wantPlugins(t, s.Plugins, `DataStore "sql" server.conf:6`, `KeyManager "memory" server.conf:12`)
}

func TestServerDerivedDefaults(t *testing.T) {
	src := strings.Replace(minimalServerConf, `data_dir = "./data"`, `data_dir = "./data"
    default_x509_svid_ttl = "30m"
    ca_key_type = "rsa-4096"
    ca_subject {}`, 1)
	s, err := ParseServer("server.conf", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if s.AgentTTL != 30*time.Minute {
		t.Errorf("agent_ttl = %s, want default_x509_svid_ttl 30m", s.AgentTTL)
	}
	if s.JWTKeyType != keys.RSA4096 {
		t.Errorf("jwt_key_type = %s, want ca_key_type rsa-4096", s.JWTKeyType)
	}
	if !reflect.DeepEqual(s.CASubject, defaultCASubject()) {
		t.Errorf("empty ca_subject gave %v, want the default", s.CASubject)
	}
}

// TestExampleConfFiles loads the example configurations the way `run`
// without -config does, from the repository root: the default -config
// paths (SPIRE's conf/server/server.conf and conf/agent/agent.conf) are
// the files in conf/.
func TestExampleConfFiles(t *testing.T) {
	t.Chdir("../..")
	s, err := LoadServer(nil)
	if err != nil {
		t.Fatalf("default -config %s: %v", DefaultServerConfigPath, err)
	}
	if s.Path != DefaultServerConfigPath {
		t.Errorf("path %s", s.Path)
	}
	var types []string
	for _, p := range s.Plugins {
		types = append(types, p.String())
	}
	if got := strings.Join(types, ", "); got != `DataStore "sql", KeyManager "disk", NodeAttestor "join_token"` {
		t.Errorf("%s: plugins %s", s.Path, got)
	}
	a, err := LoadAgent(nil)
	if err != nil {
		t.Fatalf("default -config %s: %v", DefaultAgentConfigPath, err)
	}
	types = nil
	for _, p := range a.Plugins {
		types = append(types, p.String())
	}
	if got := strings.Join(types, ", "); a.Path != DefaultAgentConfigPath || got != `NodeAttestor "join_token", KeyManager "disk", WorkloadAttestor "unix"` {
		t.Errorf("%s: plugins %s", a.Path, got)
	}
	if a.TrustDomain != s.TrustDomain || a.ServerPort != s.BindPort {
		t.Errorf("example agent (%s, port %d) does not match example server (%s, port %d)", a.TrustDomain, a.ServerPort, s.TrustDomain, s.BindPort)
	}
}

// serverConfWith builds a valid 13-line config. serverExtra is inserted in
// the server block at line 4; tail follows the base, so with an empty
// serverExtra it starts on line 14.
func serverConfWith(serverExtra, tail string) string {
	return `server {
    trust_domain = "example.org"
    data_dir = "./data"
` + serverExtra + `}
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

func TestServerUnknownConfiguration(t *testing.T) {
	cases := []struct {
		name string
		src  string
		want []string
	}{
		{"unknown key in server block",
			serverConfWith("    cache_enabled = true\n", ""),
			[]string{`server.conf:4: unknown key "cache_enabled" in server block`}},
		{"unknown block in server block",
			serverConfWith("    tuning {\n      x = 1\n    }\n", ""),
			[]string{`server.conf:4: unknown block "tuning" in server block`}},
		{"unsupported SPIRE server key",
			serverConfWith("    experimental {\n    }\n", ""),
			[]string{`server.conf:4: unsupported block "experimental" in server block`, "Sigil does not implement"}},
		{"unknown top-level key",
			serverConfWith("", "verbose = true\n"),
			[]string{`server.conf:14: unknown key "verbose" in top level`}},
		{"unsupported telemetry sink",
			serverConfWith("", "telemetry {\n  Statsd = [{ address = \"localhost:8125\" }]\n}\n"),
			[]string{`server.conf:15: unsupported key "Statsd" in telemetry block`}},
		{"unknown key in ca_subject",
			serverConfWith("    ca_subject {\n      country = [\"US\"]\n      locality = [\"Paris\"]\n    }\n", ""),
			[]string{`server.conf:6: unknown key "locality" in ca_subject block`}},
		{"unknown key in ratelimit",
			serverConfWith("    ratelimit {\n      signing = true\n      burst = 3\n    }\n", ""),
			[]string{`server.conf:6: unknown key "burst" in ratelimit block`}},
		{"unknown key in health_checks",
			serverConfWith("", "health_checks {\n  listener_enabled = true\n  path = \"/x\"\n}\n"),
			[]string{`server.conf:16: unknown key "path" in health_checks block`}},
		{"unknown plugin-level key",
			serverConfWith("", "plugins {\n  NodeAttestor \"join_token\" {\n    plugin_dta {}\n  }\n}\n"),
			[]string{`server.conf:16: unknown block "plugin_dta" in plugin NodeAttestor "join_token"`}},
		{"external plugin_cmd",
			serverConfWith("", "plugins {\n  NodeAttestor \"join_token\" {\n    plugin_cmd = \"/usr/bin/attestor\"\n  }\n}\n"),
			[]string{`server.conf:16:`, `"plugin_cmd"`, "Sigil has only built-in plugins"}},
		{"external plugin_checksum",
			serverConfWith("", "plugins {\n  NodeAttestor \"join_token\" {\n    plugin_checksum = \"abc\"\n  }\n}\n"),
			[]string{`server.conf:16:`, `"plugin_checksum"`, "Sigil has only built-in plugins"}},
		{"plugin_data_file",
			serverConfWith("", "plugins {\n  NodeAttestor \"join_token\" {\n    plugin_data_file = \"x.conf\"\n  }\n}\n"),
			[]string{`server.conf:16:`, `"plugin_data_file"`}},
		{"second DataStore",
			serverConfWith("", "plugins {\n  DataStore \"sql\" {\n    plugin_data {}\n  }\n}\n"),
			[]string{`server.conf:15: plugin DataStore "sql" is declared twice (first on line 6)`}},
		{"duplicate plugin",
			serverConfWith("", "plugins {\n  NodeAttestor \"join_token\" {}\n  NodeAttestor \"join_token\" {}\n}\n"),
			[]string{`server.conf:16: plugin NodeAttestor "join_token" is declared twice (first on line 15)`}},
		{"duplicate key",
			serverConfWith("    data_dir = \"./other\"\n", ""),
			[]string{`server.conf:4: duplicate key "data_dir" in server block (first set on line 3)`}},
	}

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseServer("server.conf", []byte(c.src))
			wantErr(t, err, c.want...)
		})
	}
}

func TestServerDisabledPluginSkipped(t *testing.T) {
	src := serverConfWith("", `plugins {
  NodeAttestor "x509pop" {
    enabled = false
    plugin_data { ca_bundle_path = "x" }
  }
  NodeAttestor "join_token" {
    enabled = false
  }
  UpstreamAuthority "disk" {
    enabled = false
  }
}
`)
	s, err := ParseServer("server.conf", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	wantPlugins(t, s.Plugins, `DataStore "sql" server.conf:6`, `KeyManager "memory" server.conf:12`)

	// enabled must still be a bool.
	src = serverConfWith("", "plugins {\n  NodeAttestor \"join_token\" {\n    enabled = \"false\"\n  }\n}\n")
	_, err = ParseServer("server.conf", []byte(src))
	wantErr(t, err, `server.conf:16: invalid value for "enabled"`, "expected a bool")
}

func TestServerWrongTypes(t *testing.T) {
	cases := []struct {
		extra string
		want  []string
	}{
		{`bind_port = "http"`, []string{`server.conf:4: invalid value for "bind_port" in server block: expected an integer, got string "http"`}},
		{`bind_port = true`, []string{`server.conf:4: invalid value for "bind_port"`, "got bool true"}},
		{`bind_port = 70000`, []string{`server.conf:4: invalid value for "bind_port"`, "out of range"}},
		{`bind_port = 80.5`, []string{`server.conf:4: invalid value for "bind_port"`, "expected an integer"}},
		{`ca_ttl = 3600`, []string{`server.conf:4: invalid value for "ca_ttl"`, `"3600" is not a duration`}},
		{`ca_ttl = "1 day"`, []string{`server.conf:4: invalid value for "ca_ttl"`, "is not a duration"}},
		{`log_level = ["INFO"]`, []string{`server.conf:4: invalid value for "log_level"`, "expected a string, got a list"}},
		{`socket_path { }`, []string{`server.conf:4: invalid value for "socket_path"`, "got a block"}},
		{`ca_subject = "C=US"`, []string{`server.conf:4: invalid value for "ca_subject"`, "expected a block"}},
		{"ca_subject {\n country = \"US\"\n }", []string{`server.conf:5: invalid value for "country" in ca_subject block: expected a list of strings`}},
		{"ca_subject {\n country = [1]\n }", []string{`server.conf:5: invalid value for "country"`}},
		{"ratelimit {\n attestation = \"no\"\n }", []string{`server.conf:5: invalid value for "attestation" in ratelimit block: expected a bool`}},
		{`ca_key_type = "ec-p521"`, []string{`server.conf:4: invalid value for "ca_key_type"`, `"ec-p521" is unknown`}},
		{`jwt_key_type = ""`, []string{`server.conf:4: invalid value for "jwt_key_type"`}},
	}
	for _, c := range cases {
		t.Run(c.extra, func(t *testing.T) {
			_, err := ParseServer("server.conf", []byte(serverConfWith("    "+c.extra+"\n", "")))
			wantErr(t, err, c.want...)
		})
	}
}

func TestServerTopLevelWrongTypes(t *testing.T) {
	_, err := ParseServer("server.conf", []byte("server = \"x\"\n"))
	wantErr(t, err, `server.conf:1: invalid value for "server" in top level: expected a block`)
	_, err = ParseServer("server.conf", []byte("plugins = 3\n"))
	wantErr(t, err, `server.conf:1: invalid value for "plugins"`)
	_, err = ParseServer("server.conf", []byte("plugins {\n  DataStore = \"sql\"\n}\n"))
	wantErr(t, err, `server.conf:2: invalid plugin "DataStore"`)
	_, err = ParseServer("server.conf", []byte("plugins {\n  DataStore \"sql\" {\n    plugin_data = \"x\"\n  }\n}\n"))
	wantErr(t, err, `server.conf:3: invalid value for "plugin_data"`)
}

func TestServerBadTrustDomains(t *testing.T) {
	for _, td := range []string{"Example.org", "exa mple.org", "spiffe://", "example.org/path", "ex@mple.org"} {
		t.Run(td, func(t *testing.T) {
			src := strings.Replace(serverConfWith("", ""), `"example.org"`, `"`+td+`"`, 1)
			_, err := ParseServer("server.conf", []byte(src))
			wantErr(t, err, `server.conf:2: invalid trust_domain "`+td+`"`)
		})
	}
	// SPIRE also accepts the trust domain written as a SPIFFE ID.
	src := strings.Replace(serverConfWith("", ""), `"example.org"`, `"spiffe://example.org"`, 1)
	s, err := ParseServer("server.conf", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if s.TrustDomain.Name() != "example.org" {
		t.Errorf("trust domain %q", s.TrustDomain)
	}
}

func TestServerValidation(t *testing.T) {
	cases := []struct {
		name string
		src  string
		want string
	}{
		{"no trust domain", strings.Replace(serverConfWith("", ""), `trust_domain = "example.org"`, "", 1), "server.conf: trust_domain must be configured"},
		{"no data_dir", strings.Replace(serverConfWith("", ""), `data_dir = "./data"`, "", 1), "data_dir must be configured"},
		{"no server block", "plugins {}\n", "trust_domain must be configured"},
		{"negative ttl", serverConfWith("    default_jwt_svid_ttl = \"-5m\"\n", ""), "default_jwt_svid_ttl must be positive"},
		{"zero ttl", serverConfWith("    ca_ttl = \"0s\"\n", ""), "ca_ttl must be positive"},
		{"bad log level", serverConfWith("    log_level = \"LOUD\"\n", ""), `log_level: invalid log level "LOUD"`},
		{"bad log format", serverConfWith("    log_format = \"xml\"\n", ""), `log_format: invalid log format "xml"`},
		{"health path", serverConfWith("", "health_checks {\n listener_enabled = true\n live_path = \"live\"\n}\n"), `health_checks.live_path "live" must start with /`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseServer("server.conf", []byte(c.src))
			wantErr(t, err, c.want)
		})
	}
}

func TestServerManyErrorsReportedTogether(t *testing.T) {
	src := serverConfWith("    colour = \"blue\"\n    bind_port = \"x\"\n", "extra = 1\n")
	_, err := ParseServer("server.conf", []byte(src))
	wantErr(t, err, `server.conf:4: unknown key "colour"`, `server.conf:5: invalid value for "bind_port"`, `server.conf:16: unknown key "extra"`)
	// One error per line, in file order.
	lines := strings.Split(err.Error(), "\n")
	want := []string{"server.conf:4:", "server.conf:5:", "server.conf:16:"}
	if len(lines) != len(want) {
		t.Fatalf("got %d errors, want %d: %q", len(lines), len(want), lines)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("error %d = %q, want prefix %q", i, lines[i], w)
		}
	}
}

func TestServerSyntaxError(t *testing.T) {
	_, err := ParseServer("server.conf", []byte("server {\n  trust_domain = \"a.org\"\n  bind_port = \n}\n"))
	wantErr(t, err, "server.conf:", "syntax error")
	_, err = ParseServer("server.json", []byte("{\"server\": {\"trust_domain\": \"a.org\",, }}"))
	wantErr(t, err, "server.json", "syntax error")
}

func TestParseServerJSON(t *testing.T) {
	src := `{
  "server": {
    "bind_port": 9999,
    "trust_domain": "example.org",
    "data_dir": "./data",
    "ca_subject": {"country": ["US"], "organization": ["Acme"]},
    "ratelimit": {"signing": false}
  },
  "plugins": {
    "DataStore": {"sql": {"plugin_data": {"database_type": "sqlite3", "connection_string": "ds.sqlite3"}}},
    "KeyManager": {"disk": {"plugin_data": {"keys_path": "./data/keys"}}},
    "NodeAttestor": {"join_token": {}}
  },
  "health_checks": {"listener_enabled": true, "bind_port": "8080"}
}`
	s, err := ParseServer("server.json", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if s.BindPort != 9999 || s.TrustDomain.Name() != "example.org" || s.RateLimit.Signing ||
		!s.RateLimit.Attestation || s.CASubject.Organization[0] != "Acme" || s.HealthChecks.BindPort != 8080 {
		t.Errorf("unexpected %+v", s)
	}
	// HCL's JSON parser gives the plugins one position: the line of "plugins".
	wantPlugins(t, s.Plugins, `DataStore "sql" server.json:9`, `KeyManager "disk" server.json:9`, `NodeAttestor "join_token" server.json:9`)
	var keysPath string
	d := s.Plugins[1].Data()
	d.String("keys_path", &keysPath)
	if err := d.Done(); err != nil || keysPath != "./data/keys" {
		t.Errorf("keys_path %q: %v", keysPath, err)
	}

	bad := strings.Replace(src, `"bind_port": 9999,`, `"bind_port": 9999, "cache_enabled": true,`, 1)
	_, err = ParseServer("server.json", []byte(bad))
	wantErr(t, err, `server.json:3: unknown key "cache_enabled" in server block`)
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadServerFlagOverrides(t *testing.T) {
	path := writeFile(t, "server.conf", minimalServerConf)
	s, err := LoadServer([]string{
		"-config", path,
		"-bindAddress", "127.0.0.2",
		"-serverPort", "0",
		"-socketPath", "/tmp/x/api.sock",
		"-trustDomain", "other.test",
		"-dataDir", "/srv/sigil",
		"-logLevel", "warn",
		"-logFormat", "JSON",
		"-logFile", "/tmp/x/log",
	})
	if err != nil {
		t.Fatal(err)
	}
	if s.BindAddress != "127.0.0.2" || s.BindPort != 0 || s.SocketPath != "/tmp/x/api.sock" ||
		s.TrustDomain.Name() != "other.test" || s.DataDir != "/srv/sigil" || s.LogLevel != "warn" ||
		s.LogFormat != "JSON" || s.LogFile != "/tmp/x/log" || s.Path != path {
		t.Errorf("flags not applied: %+v", s)
	}

	// Without flags the file's values stand.
	s, err = LoadServer([]string{"-config", path})
	if err != nil {
		t.Fatal(err)
	}
	if s.BindPort != 8081 || s.TrustDomain.Name() != "example.org" || s.DataDir != "./data" {
		t.Errorf("file values lost: %+v", s)
	}
}

func TestLoadServerFlagCompletesFile(t *testing.T) {
	src := strings.Replace(minimalServerConf, `trust_domain = "example.org"`, "", 1)
	path := writeFile(t, "server.conf", src)
	_, err := LoadServer([]string{"-config", path})
	wantErr(t, err, path+": trust_domain must be configured")
	s, err := LoadServer([]string{"-config", path, "-trustDomain", "flag.test"})
	if err != nil {
		t.Fatal(err)
	}
	if s.TrustDomain.Name() != "flag.test" {
		t.Errorf("trust domain %s", s.TrustDomain)
	}
}

func TestLoadServerErrors(t *testing.T) {
	path := writeFile(t, "server.conf", minimalServerConf)
	_, err := LoadServer([]string{"-config", path, "-registrationUDSPath", "/x"})
	wantErr(t, err, "flag provided but not defined: -registrationUDSPath")

	_, err = LoadServer([]string{"-config", path, "-serverPort", "eighty"})
	wantErr(t, err, "-serverPort")

	_, err = LoadServer([]string{"-config", path, "-trustDomain", "UPPER.org"})
	wantErr(t, err, `-trustDomain: invalid trust domain "UPPER.org"`)

	_, err = LoadServer([]string{"-config", path, "stray"})
	wantErr(t, err, `unexpected argument "stray"`)

	missing := filepath.Join(t.TempDir(), "nope.conf")
	_, err = LoadServer([]string{"-config", missing})
	wantErr(t, err, "could not find config file "+missing)

	_, err = LoadServer([]string{"-h"})
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: got %v, want flag.ErrHelp", err)
	}
	wantErr(t, errors.New(err.(*HelpError).FlagUsage()), "-bindAddress", "-serverPort", "-socketPath", "-trustDomain", "-dataDir", "-logLevel", "-logFormat", "-config")

	bad := writeFile(t, "bad.conf", serverConfWith("    cache_enabled = true\n", ""))
	_, err = LoadServer([]string{"-config", bad})
	wantErr(t, err, bad+`:4: unknown key "cache_enabled" in server block`)
}

func TestLoadServerExpandEnv(t *testing.T) {
	t.Setenv("SIGIL_TEST_TD", "env.test")
	src := strings.Replace(minimalServerConf, `"example.org"`, `"${SIGIL_TEST_TD}"`, 1)
	src = strings.Replace(src, `"./data"`, `"./da$$ta"`, 1)
	path := writeFile(t, "server.conf", src)

	s, err := LoadServer([]string{"-config", path, "-expandEnv"})
	if err != nil {
		t.Fatal(err)
	}
	if s.TrustDomain.Name() != "env.test" || s.DataDir != "./da$ta" {
		t.Errorf("expandEnv: td %s data_dir %q", s.TrustDomain, s.DataDir)
	}
	// Without -expandEnv the text stays literal (and is not a valid trust domain).
	_, err = LoadServer([]string{"-config", path})
	wantErr(t, err, "invalid trust_domain")
}

func TestServerValidateProgrammatic(t *testing.T) {
	s := DefaultServer()
	err := s.Validate()
	wantErr(t, err, "trust_domain must be configured", "data_dir must be configured")

	s, err = ParseServer("server.conf", []byte(minimalServerConf))
	if err != nil {
		t.Fatal(err)
	}
	s.JWTKeyType = ""
	s.BindPort = -1
	wantErr(t, s.Validate(), "jwt_key_type must be set", "bind_port -1 out of range")
}

// TestTrustDomainLength: a trust domain name is at most 255 bytes (SPIFFE
// ID spec), in the file and in -trustDomain.
func TestTrustDomainLength(t *testing.T) {
	ok := strings.Repeat("a", 251) + ".org"
	long := strings.Repeat("a", 252) + ".org"
	for _, c := range []struct {
		td   string
		want string // "" = accepted
	}{{ok, ""}, {"spiffe://" + ok, ""}, {long, "the maximum is 255"}, {"spiffe://" + long, "the maximum is 255"}} {
		src := strings.Replace(serverConfWith("", ""), `"example.org"`, `"`+c.td+`"`, 1)
		s, err := ParseServer("server.conf", []byte(src))
		if c.want == "" {
			if err != nil || s.TrustDomain.Name() != ok {
				t.Errorf("%d-byte trust_domain: %v", len(c.td), err)
			}
			continue
		}
		wantErr(t, err, "server.conf:2: invalid trust_domain", c.want)
	}
	path := writeFile(t, "server.conf", minimalServerConf)
	_, err := LoadServer([]string{"-config", path, "-trustDomain", long})
	wantErr(t, err, "-trustDomain: invalid trust domain", "the maximum is 255")
}
