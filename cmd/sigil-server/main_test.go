package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/cli/servercli"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/version"
)

func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// commandNames lists every command of the binary: the lead commands, the
// admin commands and their groups ("entry", "agent", ...).
func commandNames() []string {
	var names []string
	seen := map[string]bool{}
	for _, c := range append(append([]servercli.CommandInfo{}, servercli.LeadCommands...), servercli.Commands()...) {
		names = append(names, c.Name)
		if w := strings.Fields(c.Name); len(w) > 1 && !seen[w[0]] {
			seen[w[0]] = true
			names = append(names, w[0])
		}
	}
	return names
}

func TestHelpOnEveryCommand(t *testing.T) {
	names := commandNames()
	if len(names) < 20 {
		t.Fatalf("only %d commands found: %q", len(names), names)
	}
	for _, name := range append(names, "") {
		for _, h := range []string{"-h", "--help"} {
			args := append(strings.Fields(name), h)
			code, stdout, stderr := runCmd(t, args...)
			if code != 0 || !strings.Contains(stdout, "Usage") || stderr != "" {
				t.Errorf("sigil-server %s: exit %d, stdout %q, stderr %q; want the usage on stdout, nothing on stderr, exit 0",
					strings.Join(args, " "), code, stdout, stderr)
			}
		}
	}
}

func TestVersion(t *testing.T) {
	for _, arg := range []string{"version", "-version", "--version"} {
		code, stdout, stderr := runCmd(t, arg)
		if code != 0 || stdout != version.String()+"\n" || stderr != "" {
			t.Errorf("sigil-server %s: exit %d, stdout %q, stderr %q; want %q", arg, code, stdout, stderr, version.String())
		}
	}
}

// serverConf is a valid configuration keeping its state in dataDir.
func serverConf(dataDir string, caTTL time.Duration) string {
	return testutil.ServerConfig{
		TrustDomain: "example.org", DataDir: dataDir, BindAddress: "127.0.0.1", BindPort: 1,
		SocketPath: filepath.Join(dataDir, "api.sock"), CATTL: caTTL, LogLevel: "INFO",
	}.HCL()
}

// startError returns why run did not start: the error of the "Server
// failed to start" line of a JSON log or, for a configuration that does
// not load (before there is a logger), what run printed.
func startError(t *testing.T, stderr string) string {
	t.Helper()
	for _, line := range strings.Split(stderr, "\n") {
		var rec struct{ Msg, Error string }
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "Server failed to start" {
			return rec.Error
		}
	}
	if !strings.HasPrefix(stderr, "{") {
		return strings.TrimSpace(stderr)
	}
	t.Fatalf("no \"Server failed to start\" line in:\n%s", stderr)
	return ""
}

// TestValidateMakesRunsChecks: validate fails, with run's error, on every
// configuration run refuses before it creates or binds anything.
func TestValidateMakesRunsChecks(t *testing.T) {
	for _, tc := range []struct {
		name    string
		edit    func(string) string
		wantErr string
	}{
		{"missing upstream file", func(s string) string {
			return strings.Replace(s, "plugins {\n", "plugins {\n    UpstreamAuthority \"disk\" {\n        plugin_data {\n            cert_file_path = \"/nonexistent/up.crt\"\n            key_file_path = \"/nonexistent/up.key\"\n        }\n    }\n", 1)
		}, "/nonexistent/up.crt"},
		{"unsupported database_type", func(s string) string {
			return strings.Replace(s, `database_type = "sqlite3"`, `database_type = "mysql"`, 1)
		}, `database_type "mysql" is not supported`},
		{"unparsable PostgreSQL connection_string", func(s string) string {
			return postgresAt(s, "host=db port=notaport")
		}, `{conf}:15: plugin DataStore "sql": connection_string does not parse: `},
		{"ca_ttl under a minute", func(s string) string {
			return strings.Replace(s, "server {\n", "server {\n    ca_ttl = \"30s\"\n", 1)
		}, "ca_ttl 30s is too short"},
		// The plugins section, checked by the server's catalog: errors
		// name the file and line ({conf} is the file).
		{"unknown plugin", func(s string) string {
			return strings.Replace(s, `NodeAttestor "join_token" {`, `NodeAttestor "join_tokn" {`, 1)
		}, `{conf}:23: unknown plugin NodeAttestor "join_tokn": Sigil's built-in NodeAttestor plugins are: `},
		{"unknown plugin_data key", func(s string) string {
			return strings.Replace(s, `database_type = "sqlite3"`, "database_type = \"sqlite3\"\n            max_conns = 3", 1)
		}, `{conf}:15: unknown key "max_conns" in plugin_data of plugin DataStore "sql"`},
		{"plugin_data value of the wrong type", func(s string) string {
			return strings.Replace(s, `database_type = "sqlite3"`, `database_type = ["sqlite3"]`, 1)
		}, `{conf}:14: invalid value for "database_type" in plugin_data of plugin DataStore "sql": expected a string, got a list`},
		{"unknown plugin type", func(s string) string {
			return strings.Replace(s, "plugins {\n", "plugins {\n    Notifier \"k8sbundle\" {}\n", 1)
		}, `{conf}:12: unsupported plugin type Notifier (plugin Notifier "k8sbundle")`},
		// Files and directories plugins read or create: checked by the
		// parse, so validate reports them with their line ({dir} is the
		// test's directory, where the file is {conf}).
		{"missing tpm ek_ca_path", func(s string) string {
			return withPlugin(s, `NodeAttestor "tpm"`, `ek_ca_path = "{dir}/tpm-ek-cas"`)
		}, `{conf}:14: plugin NodeAttestor "tpm": ek_ca_path: stat {dir}/tpm-ek-cas: no such file or directory`},
		{"tpm ek_hash_path not a directory", func(s string) string {
			return withPlugin(s, `NodeAttestor "tpm"`, `ek_hash_path = "{conf}"`)
		}, `{conf}:14: plugin NodeAttestor "tpm": ek_hash_path {conf} is not a directory`},
		{"missing x509pop ca_bundle_path", func(s string) string {
			return withPlugin(s, `NodeAttestor "x509pop"`, `ca_bundle_path = "{dir}/device-ca.crt"`)
		}, `{conf}:14: plugin NodeAttestor "x509pop": CA bundle: `},
		{"KeyManager disk keys_path a file (SPIRE's)", func(s string) string {
			i := strings.Index(s, "keys_path = ")
			j := i + strings.Index(s[i:], "\n")
			return s[:i] + `keys_path = "{conf}"` + s[j:]
		}, `{conf}:20: plugin KeyManager "disk": keys_path: {conf} is not a directory`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			dataDir := filepath.Join(dir, "data")
			conf := filepath.Join(dir, "server.conf")
			r := strings.NewReplacer("{conf}", conf, "{dir}", dir)
			src := r.Replace(tc.edit(serverConf(dataDir, 0)))
			if err := os.WriteFile(conf, []byte(src), 0o600); err != nil {
				t.Fatal(err)
			}
			wantErr := r.Replace(tc.wantErr)
			vcode, vout, verr := runCmd(t, "validate", "-config", conf, "-logFormat", "json")
			if vcode != 1 || vout != "" || !strings.Contains(verr, wantErr) {
				t.Fatalf("validate: exit %d, stdout %q, stderr %q; want exit 1 and an error containing %q", vcode, vout, verr, wantErr)
			}
			rcode, _, rerr := runCmd(t, "run", "-config", conf, "-logFormat", "json")
			if rcode != 1 {
				t.Fatalf("run: exit %d, want 1; stderr %s", rcode, rerr)
			}
			if got, want := startError(t, rerr), strings.TrimSpace(verr); got != want {
				t.Errorf("run and validate disagree:\nrun:      %s\nvalidate: %s", got, want)
			}
			if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
				t.Errorf("run created data_dir before failing its checks (stat: %v)", err)
			}
		})
	}
}

// withPlugin adds plugin (`Type "name"`) with one plugin_data line at the
// start of src's plugins section: the line is line 14.
func withPlugin(src, plugin, line string) string {
	return strings.Replace(src, "plugins {\n", "plugins {\n    "+plugin+" {\n        plugin_data {\n            "+line+"\n        }\n    }\n", 1)
}

func TestValidateWarnsAndAccepts(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "server.conf")
	src := serverConf(filepath.Join(dir, "data"), time.Hour)
	if err := os.WriteFile(conf, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCmd(t, "validate", "-config", conf)
	if code != 0 || !strings.Contains(stdout, "is valid") || !strings.Contains(stderr, "level=WARN") || !strings.Contains(stderr, "ca_ttl is less than 6 times the X509-SVID TTL") {
		t.Errorf("validate: exit %d, stdout %q, stderr %q; want valid with the ca_ttl warning", code, stdout, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); !os.IsNotExist(err) {
		t.Errorf("validate created data_dir (stat: %v)", err)
	}
}

// postgresAt switches serverConf's DataStore to PostgreSQL at conn.
func postgresAt(src, conn string) string {
	src = strings.Replace(src, `database_type = "sqlite3"`, `database_type = "postgres"`, 1)
	i := strings.Index(src, "connection_string = ")
	j := i + strings.Index(src[i:], "\n")
	return src[:i] + "connection_string = " + strconv.Quote(conn) + src[j:]
}

// TestValidatePostgresDoesNotConnect: like spire-server validate, validate
// checks that a PostgreSQL connection string parses but does not connect
// (run does, and fails on an unreachable database).
func TestValidatePostgresDoesNotConnect(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "server.conf")
	src := postgresAt(serverConf(filepath.Join(dir, "data"), 24*time.Hour), "host=127.0.0.1 port=1 dbname=sigil user=sigil password=hunter2 connect_timeout=5")
	if err := os.WriteFile(conf, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCmd(t, "validate", "-config", conf)
	if code != 0 || !strings.Contains(stdout, "is valid") {
		t.Fatalf("validate: exit %d, stdout %q, stderr %q; want valid", code, stdout, stderr)
	}
	code, _, stderr = runCmd(t, "run", "-config", conf, "-logFormat", "json")
	if code != 1 || !strings.Contains(startError(t, stderr), "connect to PostgreSQL (host=127.0.0.1 port=1 dbname=sigil user=sigil)") {
		t.Fatalf("run: exit %d, stderr %s; want a connection failure naming the database", code, stderr)
	}
	if strings.Contains(stderr, "hunter2") {
		t.Errorf("run logged the password: %s", stderr)
	}
}

// TestREADMERunBlock keeps the README block that .ci/readme-run executes
// findable: its markers, one sh block between them, and the commands the
// CI check relies on.
func TestREADMERunBlock(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	_, rest, ok := strings.Cut(readme, "<!-- readme-run: begin")
	if !ok {
		t.Fatal("README.md lost its <!-- readme-run: begin --> marker (.ci/readme-run runs the block after it)")
	}
	block, _, ok := strings.Cut(rest, "<!-- readme-run: end")
	if !ok {
		t.Fatal("README.md lost its <!-- readme-run: end --> marker")
	}
	if strings.Count(block, "```sh\n") != 1 || strings.Count(block, "```") != 2 {
		t.Fatalf("the readme-run markers must enclose exactly one ```sh block:\n%s", block)
	}
	for _, want := range []string{"bin/sigil-server run", "healthcheck", "token generate", "bin/sigil-agent run", "api fetch x509", "spiffe://example.org/myservice"} {
		if !strings.Contains(block, want) {
			t.Errorf("the readme-run block lacks %q", want)
		}
	}
}

// TestX509popConfExamplesUseREADMEPKI: the files the commented x509pop
// blocks of conf/server/server.conf and conf/agent/agent.conf name are the
// ones the README's device PKI block writes (-out, -keyout), so those
// blocks work uncommented after it.
func TestX509popConfExamplesUseREADMEPKI(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, pki, ok := strings.Cut(string(readme), "```sh\nmkdir -p .data/pki\n")
	if !ok {
		t.Fatal("README.md has no device PKI block (```sh, then mkdir -p .data/pki)")
	}
	pki, _, _ = strings.Cut(pki, "```")
	written := map[string]bool{}
	for _, f := range strings.Fields(pki) {
		if strings.HasPrefix(f, ".data/pki/") {
			written["./"+f] = true
		}
	}
	for conf, keys := range map[string][]string{
		"../../conf/server/server.conf": {"ca_bundle_path"},
		"../../conf/agent/agent.conf":   {"private_key_path", "certificate_path"},
	} {
		b, err := os.ReadFile(conf)
		if err != nil {
			t.Fatal(err)
		}
		_, block, ok := strings.Cut(string(b), `    # NodeAttestor "x509pop" {`)
		if !ok {
			t.Fatalf("%s: no commented NodeAttestor \"x509pop\" block", conf)
		}
		block, _, _ = strings.Cut(block, "\n    # }\n")
		for _, key := range keys {
			_, v, ok := strings.Cut(block, "#         "+key+" = \"")
			if !ok {
				t.Errorf("%s: the x509pop block sets no %s", conf, key)
				continue
			}
			v, _, _ = strings.Cut(v, "\"")
			if !written[v] {
				t.Errorf("%s: x509pop %s = %q, which the README's device PKI block does not write (it writes %v)", conf, key, v, written)
			}
		}
	}
}

// TestGitignoreCoversState: what the README and dev leave in the checkout
// (./.data with the CA's private key, ./.sigil-dev, conf/bootstrap.crt,
// bin/) is ignored by git, so it is never committed by accident.
func TestGitignoreCoversState(t *testing.T) {
	git, err := exec.LookPath("git")
	if err != nil {
		t.Skip("git not installed")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if err := exec.Command(git, "-C", root, "rev-parse", "--git-dir").Run(); err != nil {
		t.Skip("not a git checkout")
	}
	for _, p := range []string{".data/server/keys/x509-CA-A", ".data/server.log", ".sigil-dev/server/datastore.sqlite3", "conf/bootstrap.crt", "bin/sigil-agent"} {
		// check-ignore exits 0 when the path is ignored.
		if err := exec.Command(git, "-C", root, "check-ignore", "-q", "--no-index", p).Run(); err != nil {
			t.Errorf("%s is not ignored by .gitignore", p)
		}
	}
}
