package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// SPIRE's README examples (those without ACME) parse as SPIRE reads them.
func TestOIDCSPIREExamples(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      *OIDC
	}{
		{"server API and serving certificate", `log_level = "debug"
domains = ["mypublicdomain.test"]
serving_cert_file {
 cert_file_path = "/some/path/on/disk/to/cert.pem"
 key_file_path = "/some/path/on/disk/to/key.pem"
}
server_api {
    address = "unix:///tmp/spire-server/private/api.sock"
}
`, &OIDC{LogLevel: "debug", Domains: []string{"mypublicdomain.test"},
			ServingCertFile: &OIDCServingCertFile{CertFilePath: "/some/path/on/disk/to/cert.pem", KeyFilePath: "/some/path/on/disk/to/key.pem", FileSyncInterval: time.Minute, Addr: ":443"},
			ServerAPI:       &OIDCServerAPI{Address: "unix:///tmp/spire-server/private/api.sock", PollInterval: 10 * time.Second}}},
		{"workload API on a unix socket", `log_level = "debug"
domains = ["mypublicdomain.test"]
listen_socket_path = "/run/oidc-discovery-provider/server.sock"

workload_api {
    socket_path = "/tmp/spire-agent/private/api.sock"
    trust_domain = "domain.test"
}
`, &OIDC{LogLevel: "debug", Domains: []string{"mypublicdomain.test"}, ListenSocketPath: "/run/oidc-discovery-provider/server.sock",
			WorkloadAPI: &OIDCWorkloadAPI{SocketPath: "/tmp/spire-agent/private/api.sock", TrustDomain: spiffeid.RequireTrustDomainFromString("domain.test"), PollInterval: 10 * time.Second}}},
		{"every key", `domains = ["oidc.example.org", "oidc.example.org", "localhost"]
insecure_addr = "127.0.0.1:8080"
allow_insecure_scheme = true
set_key_use = true
jwt_issuer = "https://oidc.example.org/prefix"
jwks_uri = "https://cdn.example.org/keys"
server_path_prefix = "/prefix"
log_level = "WARN"
log_format = "json"
log_path = "/var/log/sigil-oidc.log"
log_requests = true
file {
    path = "/etc/bundle.json"
    poll_interval = "1m"
}
health_checks {
    bind_port = "8009"
    ready_path = "/r"
    live_path = "/l"
}
`, &OIDC{Domains: []string{"oidc.example.org", "localhost"}, InsecureAddr: "127.0.0.1:8080", AllowInsecureScheme: true, SetKeyUse: true,
			JWTIssuer: "https://oidc.example.org/prefix", JWKSURI: "https://cdn.example.org/keys", ServerPathPrefix: "/prefix",
			LogLevel: "WARN", LogFormat: "json", LogPath: "/var/log/sigil-oidc.log", LogRequests: true,
			File:         &OIDCFile{Path: "/etc/bundle.json", PollInterval: time.Minute},
			HealthChecks: &OIDCHealthChecks{BindPort: 8009, ReadyPath: "/r", LivePath: "/l"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseOIDC("oidc.conf", []byte(tc.src))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// Unknown keys, SPIRE's options Sigil lacks, bad values and SPIRE's
// exclusions are errors, decoding ones with their line.
func TestOIDCErrors(t *testing.T) {
	const ok = "domains = [\"localhost\"]\ninsecure_addr = \"127.0.0.1:0\"\nworkload_api {\n  socket_path = \"/a.sock\"\n  trust_domain = \"example.org\"\n}\n"
	for _, tc := range []struct {
		name, src, want string
	}{
		{"unknown key", ok + "listen_addr = \":80\"\n", `oidc.conf:7: unknown key "listen_addr" in top level`},
		{"unknown key in a block", "domains = [\"localhost\"]\ninsecure_addr = \":0\"\nworkload_api {\n  socket_path = \"/a.sock\"\n  trust_domain = \"example.org\"\n  timeout = \"1s\"\n}\n", `oidc.conf:6: unknown key "timeout" in workload_api block`},
		{"acme", ok + "acme {\n  email = \"a@b.test\"\n  tos_accepted = true\n}\n", `oidc.conf:7: unsupported block "acme" in top level`},
		{"experimental", ok + "experimental {\n  listen_named_pipe_name = \"x\"\n}\n", `oidc.conf:7: unsupported block "experimental" in top level`},
		{"wrong type", ok + "set_key_use = \"yes\"\n", `oidc.conf:7: invalid value for "set_key_use" in top level: expected a bool`},
		{"unicode domain", "domains = [\"bücher.example\"]\ninsecure_addr = \":0\"\nfile {\n  path = \"/b\"\n}\n", `oidc.conf:1: invalid domains: "bücher.example" must be written in its ASCII`},
		{"bad issuer", ok + "jwt_issuer = \"oidc.example.org\"\n", `oidc.conf:7: invalid jwt_issuer: "oidc.example.org" has no scheme`},
		{"bad poll interval", "domains = [\"localhost\"]\ninsecure_addr = \":0\"\nfile {\n  path = \"/b\"\n  poll_interval = \"-1s\"\n}\n", `oidc.conf:5: invalid value for "poll_interval" in file block: must be positive`},
		{"bad trust domain", "domains = [\"localhost\"]\ninsecure_addr = \":0\"\nworkload_api {\n  socket_path = \"/a.sock\"\n  trust_domain = \"Example.org\"\n}\n", `oidc.conf:5: invalid trust_domain "Example.org"`},
		{"no domains", "insecure_addr = \":0\"\nfile {\n  path = \"/b\"\n}\n", "at least one domain must be configured"},
		{"no listener", "domains = [\"localhost\"]\nfile {\n  path = \"/b\"\n}\n", "one of serving_cert_file, insecure_addr or listen_socket_path must be configured"},
		{"two listeners", ok + "listen_socket_path = \"/s.sock\"\n", "mutually exclusive"},
		{"no source", "domains = [\"localhost\"]\ninsecure_addr = \":0\"\n", "exactly one of the server_api, workload_api, or file sections must be configured"},
		{"two sources", ok + "file {\n  path = \"/b\"\n}\n", "the server_api, workload_api, and file sections are mutually exclusive"},
		{"server API over TCP", "domains = [\"localhost\"]\ninsecure_addr = \":0\"\nserver_api {\n  address = \"127.0.0.1:8081\"\n}\n", "address must use the unix name system"},
		{"no trust domain", "domains = [\"localhost\"]\ninsecure_addr = \":0\"\nworkload_api {\n  socket_path = \"/a.sock\"\n}\n", "trust_domain must be configured in the workload_api"},
		{"certificate without key", "domains = [\"localhost\"]\nserving_cert_file {\n  cert_file_path = \"/c.pem\"\n}\nfile {\n  path = \"/b\"\n}\n", "key_file_path must be configured"},
		{"bad log level", ok + "log_level = \"loud\"\n", "log_level: invalid log level"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseOIDC("oidc.conf", []byte(tc.src))
			wantErr(t, err, tc.want)
		})
	}
}

// LoadOIDC reads -config (expanding the environment with -expandEnv).
func TestLoadOIDC(t *testing.T) {
	path := filepath.Join(t.TempDir(), "oidc.conf")
	src := "domains = [\"localhost\"]\ninsecure_addr = \"$ADDR\"\nfile {\n  path = \"/b\"\n}\n"
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("ADDR", "127.0.0.1:9999")
	c, err := LoadOIDC([]string{"-config", path, "-expandEnv"})
	if err != nil {
		t.Fatal(err)
	}
	if c.InsecureAddr != "127.0.0.1:9999" {
		t.Fatalf("insecure_addr %q", c.InsecureAddr)
	}
	if _, err := LoadOIDC([]string{"-config", filepath.Join(t.TempDir(), "missing.conf")}); err == nil {
		t.Fatal("a missing file loaded")
	}
}

// TestExampleOIDCConf: conf/oidc/oidc-discovery-provider.conf loads, reads
// the keys from the example agent's Workload API socket and trust domain,
// and its commented alternatives (server API on the example server's
// admin socket, HTTPS, health checks) parse too once uncommented in
// place of what they replace.
func TestExampleOIDCConf(t *testing.T) {
	t.Chdir("../..")
	const path = "conf/oidc/oidc-discovery-provider.conf"
	c, err := LoadOIDC([]string{"-config", path})
	if err != nil {
		t.Fatal(err)
	}
	a, err := LoadAgent(nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := LoadServer(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.WorkloadAPI == nil || c.WorkloadAPI.SocketPath != a.SocketPath || c.WorkloadAPI.TrustDomain != a.TrustDomain || c.InsecureAddr == "" {
		t.Fatalf("%s: %+v does not read the example agent's socket %s (%s)", path, c.WorkloadAPI, a.SocketPath, a.TrustDomain)
	}

	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Uncomment every "# key ..." line (not the prose), then drop the
	// alternatives the uncommented ones replace.
	var lines []string
	for _, l := range strings.Split(string(src), "\n") {
		trimmed := strings.TrimLeft(l, " ")
		if rest, ok := strings.CutPrefix(trimmed, "# "); ok && (strings.Contains(rest, " = ") || strings.HasSuffix(rest, "{") || strings.TrimSpace(rest) == "}") {
			l = strings.Repeat(" ", len(l)-len(trimmed)) + rest
		}
		lines = append(lines, l)
	}
	all := strings.Join(lines, "\n")
	for _, drop := range []string{
		"insecure_addr = \"localhost:8083\"\n", "listen_socket_path = \"/run/sigil-oidc/server.sock\"\n",
	} {
		all = strings.Replace(all, drop, "", 1)
	}
	// Keep one key source: the server API.
	for _, block := range []string{"\nworkload_api {", "\nfile {"} {
		i := strings.Index(all, block)
		j := strings.Index(all[i+1:], "\n}\n")
		all = all[:i+1] + all[i+1+j+3:]
	}
	u, err := ParseOIDC(path+" (uncommented)", []byte(all))
	if err != nil {
		t.Fatalf("%v\n%s", err, all)
	}
	if u.ServerAPI == nil || u.ServerAPI.Address != "unix://"+s.SocketPath || u.ServingCertFile == nil || u.HealthChecks == nil || u.JWTIssuer == "" || !u.SetKeyUse {
		t.Fatalf("uncommented example: %+v", u)
	}
}
