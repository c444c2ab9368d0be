package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/cli/agentcli"
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
	for _, c := range append(append([]agentcli.CommandInfo{}, agentcli.LeadCommands...), agentcli.Commands()...) {
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
	if len(names) < 8 {
		t.Fatalf("only %d commands found: %q", len(names), names)
	}
	for _, name := range append(names, "") {
		for _, h := range []string{"-h", "--help"} {
			args := append(strings.Fields(name), h)
			code, stdout, stderr := runCmd(t, args...)
			if code != 0 || !strings.Contains(stdout, "Usage") || stderr != "" {
				t.Errorf("sigil-agent %s: exit %d, stdout %q, stderr %q; want the usage on stdout, nothing on stderr, exit 0",
					strings.Join(args, " "), code, stdout, stderr)
			}
		}
	}
}

func TestVersion(t *testing.T) {
	for _, arg := range []string{"version", "-version", "--version"} {
		code, stdout, stderr := runCmd(t, arg)
		if code != 0 || stdout != version.String()+"\n" || stderr != "" {
			t.Errorf("sigil-agent %s: exit %d, stdout %q, stderr %q; want %q", arg, code, stdout, stderr, version.String())
		}
	}
}

// TestValidateMakesRunsChecks: validate fails, with run's error, on every
// bootstrap trust bundle run refuses before it creates or binds anything.
func TestValidateMakesRunsChecks(t *testing.T) {
	const spiffeJSON = `{"keys": [], "spiffe_sequence": 1}`
	for _, tc := range []struct {
		name, content string // content "" = no file
		format        string
		wantErr       []string
	}{
		{"missing", "", "pem", []string{"trust_bundle_path", "bootstrap.crt", "no such file"}},
		{"empty", "\n", "pem", []string{"trust_bundle_path", "bootstrap.crt", "is empty"}},
		{"SPIFFE read as PEM", spiffeJSON, "pem", []string{"bootstrap.crt", `trust_bundle_format = "spiffe"`}},
		{"PEM read as SPIFFE", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "spiffe", []string{"bootstrap.crt", `trust_bundle_format = "pem"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			dataDir := filepath.Join(dir, "data")
			bundle := filepath.Join(dir, "bootstrap.crt")
			if tc.content != "" {
				if err := os.WriteFile(bundle, []byte(tc.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			conf := filepath.Join(dir, "agent.conf")
			src := testutil.AgentConfig{
				TrustDomain: "example.org", ServerAddress: "127.0.0.1", ServerPort: 1, DataDir: dataDir,
				SocketPath: filepath.Join(dataDir, "api.sock"), TrustBundlePath: bundle, LogLevel: "INFO",
			}.HCL()
			src = strings.Replace(src, `trust_bundle_format = "pem"`, `trust_bundle_format = "`+tc.format+`"`, 1)
			if err := os.WriteFile(conf, []byte(src), 0o600); err != nil {
				t.Fatal(err)
			}
			vcode, vout, verr := runCmd(t, "validate", "-config", conf)
			if vcode != 1 || vout != "" {
				t.Fatalf("validate: exit %d, stdout %q, stderr %q; want exit 1", vcode, vout, verr)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(verr, w) {
					t.Errorf("validate error %q lacks %q", verr, w)
				}
			}
			rcode, _, rerr := runCmd(t, "run", "-config", conf, "-logFormat", "json")
			if rcode != 1 {
				t.Fatalf("run: exit %d, want 1; stderr %s", rcode, rerr)
			}
			var got string
			for _, line := range strings.Split(rerr, "\n") {
				var rec struct{ Msg, Error string }
				if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "Agent failed to start" {
					got = rec.Error
				}
			}
			if want := strings.TrimSpace(verr); got != want {
				t.Errorf("run and validate disagree:\nrun:      %s\nvalidate: %s", got, want)
			}
			if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
				t.Errorf("run created data_dir before failing its checks (stat: %v)", err)
			}
		})
	}
}

// TestPluginErrors: the plugins section is checked by the agent's catalog
// when run and validate load the file: both refuse, with the same error
// naming the file and line, before anything is created.
func TestPluginErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		old, new string // the edit of a valid file
		wantErr  string // {conf}:{line} is the file and the line of new
		// offset is added to {line}: the error is on that line of new.
		offset int
	}{
		{"unknown plugin", `WorkloadAttestor "unix" {`, `WorkloadAttestor "windows" {`,
			`{conf}:{line}: unknown plugin WorkloadAttestor "windows": Sigil's built-in WorkloadAttestor plugins are: `, 0},
		{"unknown plugin_data key", "discover_workload_path = false", "discover_path = true",
			`{conf}:{line}: unknown key "discover_path" in plugin_data of plugin WorkloadAttestor "unix"`, 0},
		{"plugin_data value of the wrong type", "discover_workload_path = false", `discover_workload_path = "yes"`,
			`{conf}:{line}: invalid value for "discover_workload_path" in plugin_data of plugin WorkloadAttestor "unix": expected a bool`, 0},
		{"unsupported plugin type", `NodeAttestor "join_token" {`, `SVIDStore "gcp_secretmanager" {}
    NodeAttestor "join_token" {`,
			`{conf}:{line}: unsupported plugin type SVIDStore (plugin SVIDStore "gcp_secretmanager")`, 0},
		// Files and directories plugins read or create: checked by the
		// parse, so validate reports them with their line ({dir} is the
		// test's directory, {data} data_dir).
		{"KeyManager disk directory a file", `directory = "{data}/keys"`, `directory = "{conf}"`,
			`{conf}:{line}: plugin KeyManager "disk": directory: {conf} is not a directory`, 0},
		{"KeyManager tpm directory under a file", `KeyManager "disk" {
        plugin_data {
            directory = "{data}/keys"`, `KeyManager "tpm" {
        plugin_data {
            directory = "{conf}/keys"`,
			`{conf}:{line}: plugin KeyManager "tpm": directory: {conf}/keys cannot be created: {conf} is not a directory`, 2},
		{"missing x509pop certificate", `NodeAttestor "join_token" {
        plugin_data {}`, `NodeAttestor "x509pop" {
        plugin_data {
            certificate_path = "{dir}/device.crt"
            private_key_path = "{dir}/device.key"
        }`,
			`{conf}:{line}: plugin NodeAttestor "x509pop": `, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			dataDir := filepath.Join(dir, "data")
			conf := filepath.Join(dir, "agent.conf")
			src := testutil.AgentConfig{
				TrustDomain: "example.org", ServerAddress: "127.0.0.1", ServerPort: 1, DataDir: dataDir,
				SocketPath: filepath.Join(dataDir, "api.sock"), TrustBundlePath: filepath.Join(dir, "bootstrap.crt"), LogLevel: "INFO",
			}.HCL()
			paths := strings.NewReplacer("{conf}", conf, "{dir}", dir, "{data}", dataDir)
			old := paths.Replace(tc.old)
			at := strings.Index(src, old)
			if at < 0 {
				t.Fatalf("%q is not in the configuration", old)
			}
			line := 1 + strings.Count(src[:at], "\n") + tc.offset
			src = src[:at] + paths.Replace(tc.new) + src[at+len(old):]
			if err := os.WriteFile(conf, []byte(src), 0o600); err != nil {
				t.Fatal(err)
			}
			want := strings.NewReplacer("{line}", strconv.Itoa(line)).Replace(paths.Replace(tc.wantErr))
			vcode, vout, verr := runCmd(t, "validate", "-config", conf)
			if vcode != 1 || vout != "" || !strings.Contains(verr, want) {
				t.Fatalf("validate: exit %d, stdout %q, stderr %q; want exit 1 and an error containing %q", vcode, vout, verr, want)
			}
			rcode, _, rerr := runCmd(t, "run", "-config", conf, "-logFormat", "json")
			if rcode != 1 || strings.TrimSpace(rerr) != strings.TrimSpace(verr) {
				t.Fatalf("run: exit %d, stderr %q; want exit 1 and validate's error %q", rcode, rerr, verr)
			}
			if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
				t.Errorf("run created data_dir before failing its checks (stat: %v)", err)
			}
		})
	}
}
