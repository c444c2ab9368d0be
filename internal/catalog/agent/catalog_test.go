package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	agentcatalog "github.com/sigil-spiffe/sigil/internal/catalog/agent"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/keys"
)

// confWith is a valid 14-line agent.conf; tail follows it (from line 15).
func confWith(tail string) string {
	return `agent {
    server_address = "127.0.0.1"
    server_port = 8081
    trust_domain = "example.org"
    trust_bundle_path = "bundle.pem"
}
plugins {
    NodeAttestor "join_token" {}
    KeyManager "memory" {}
    WorkloadAttestor "unix" {
        plugin_data {
        }
    }
}
` + tail
}

func parse(t *testing.T, src string) (*agentcatalog.Plugins, error) {
	t.Helper()
	cfg, err := config.ParseAgent("agent.conf", []byte(src))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return agentcatalog.Parse(cfg)
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
	base := confWith("")
	cases := []struct {
		name string
		src  string
		want []string
	}{
		{"unknown plugin",
			confWith("plugins {\n  WorkloadAttestor \"windows\" {}\n}\n"),
			[]string{`agent.conf:16: unknown plugin WorkloadAttestor "windows": Sigil's built-in WorkloadAttestor plugins are: `, "unix"}},
		{"unknown NodeAttestor",
			strings.Replace(base, `NodeAttestor "join_token" {}`, `NodeAttestor "sshpop" {}`, 1),
			[]string{`agent.conf:8: unknown plugin NodeAttestor "sshpop": Sigil's built-in NodeAttestor plugins are: `, "join_token",
				`agent.conf: exactly one NodeAttestor plugin must be configured: NodeAttestor "`, `NodeAttestor "join_token"`}},
		{"server plugin type",
			confWith("plugins {\n  DataStore \"sql\" {}\n}\n"),
			[]string{`agent.conf:16: unknown plugin type "DataStore" (plugin DataStore "sql"): known types are KeyManager, NodeAttestor, WorkloadAttestor`}},
		{"unsupported plugin type",
			confWith("plugins {\n  SVIDStore \"aws_secretsmanager\" {}\n}\n"),
			[]string{`agent.conf:16: unsupported plugin type SVIDStore (plugin SVIDStore "aws_secretsmanager")`}},
		{"second KeyManager",
			strings.Replace(base, `KeyManager "memory" {}`, "KeyManager \"memory\" {}\n    KeyManager \"disk\" {\n        plugin_data {\n            directory = \"k\"\n        }\n    }", 1),
			[]string{`agent.conf:10: plugin KeyManager "disk": only one KeyManager plugin may be configured ("memory" is on line 9)`}},
		{"disk without directory",
			strings.Replace(base, `KeyManager "memory" {}`, `KeyManager "disk" {}`, 1),
			[]string{`agent.conf:9: plugin KeyManager "disk": directory must be configured`}},
		{"unknown unix option",
			strings.Replace(base, "plugin_data {\n", "plugin_data {\n            workload_path = true\n", 1),
			[]string{`agent.conf:12: unknown key "workload_path" in plugin_data of plugin WorkloadAttestor "unix"`}},
		{"unix value of the wrong type",
			strings.Replace(base, "plugin_data {\n", "plugin_data {\n            workload_size_limit = \"big\"\n", 1),
			[]string{`agent.conf:12: invalid value for "workload_size_limit" in plugin_data of plugin WorkloadAttestor "unix"`, "expected an integer"}},
		{"join_token plugin_data",
			strings.Replace(base, `NodeAttestor "join_token" {}`, "NodeAttestor \"join_token\" {\n        plugin_data {\n            token = \"x\"\n        }\n    }", 1),
			[]string{`agent.conf:10: unknown key "token" in plugin_data of plugin NodeAttestor "join_token"`}},
		{"no NodeAttestor",
			strings.Replace(base, `NodeAttestor "join_token" {}`, "", 1),
			[]string{`agent.conf: exactly one NodeAttestor plugin must be configured: NodeAttestor "`, `NodeAttestor "join_token"`}},
		{"no KeyManager",
			strings.Replace(base, `KeyManager "memory" {}`, "", 1),
			[]string{`agent.conf: exactly one KeyManager plugin must be configured: KeyManager "disk" or KeyManager "memory"`}},
		{"no WorkloadAttestor",
			strings.Replace(base, "WorkloadAttestor \"unix\" {\n        plugin_data {\n        }\n    }", "", 1),
			[]string{`agent.conf: at least one WorkloadAttestor plugin must be configured: WorkloadAttestor `, `WorkloadAttestor "unix"`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := parse(t, c.src)
			wantErr(t, err, c.want...)
		})
	}
}

// TestParseReportsEveryError: one run names every problem of the section.
func TestParseReportsEveryError(t *testing.T) {
	src := strings.Replace(confWith("plugins {\n  WorkloadAttestor \"windows\" {}\n  Cache \"redis\" {}\n}\n"), `KeyManager "memory" {}`, `KeyManager "disk" {}`, 1)
	_, err := parse(t, src)
	wantErr(t, err, `agent.conf:9: plugin KeyManager "disk": directory must be configured`, `agent.conf:16: unknown plugin WorkloadAttestor "windows"`,
		`agent.conf:17: unknown plugin type "Cache"`)
}

func TestParseAndBuild(t *testing.T) {
	dir := t.TempDir()
	keysDir := filepath.Join(dir, "keys")
	src := strings.Replace(confWith(""), `KeyManager "memory" {}`, "KeyManager \"disk\" {\n        plugin_data {\n            directory = \""+keysDir+"\"\n        }\n    }", 1)
	src = strings.Replace(src, "plugin_data {\n        }", "plugin_data {\n            discover_workload_path = true\n            workload_size_limit = -1\n        }", 1)
	p, err := parse(t, src)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(p.Names(), ", "); got != `NodeAttestor "join_token", KeyManager "disk", WorkloadAttestor "unix"` {
		t.Errorf("Names = %s", got)
	}
	ctx := context.Background()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	na, err := p.NodeAttestor().Build(ctx, agentcatalog.NodeAttestorDeps{TrustDomain: td, JoinToken: "tok"})
	if err != nil {
		t.Fatal(err)
	}
	jt, ok := na.(agentcatalog.JoinToken)
	if !ok || na.Type() != "join_token" || jt.Token != "tok" {
		t.Fatalf("NodeAttestor %#v", na)
	}
	if id, ok := jt.Credential(td); !ok || id.String() != "spiffe://example.org/spire/agent/join_token/tok" {
		t.Errorf("Credential = %s, %v", id, ok)
	}
	s, err := na.Begin(ctx)
	if err != nil || string(s.Payload()) != "tok" {
		t.Fatalf("Begin = %v, %v", s, err)
	}
	km, err := p.KeyManager().Build(ctx, agentcatalog.KeyManagerDeps{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if d, ok := km.(*keys.Disk); !ok || d.Dir() != keysDir {
		t.Fatalf("KeyManager %#v, want disk in %s", km, keysDir)
	}
	ws := p.WorkloadAttestors()
	if len(ws) != 1 || ws[0].Plugin().Name != "unix" {
		t.Fatalf("WorkloadAttestors %v", ws)
	}
	if _, err := ws[0].Build(ctx, agentcatalog.WorkloadAttestorDeps{}); err != nil {
		t.Fatal(err)
	}
}

// TestJoinTokenWithoutToken: join_token with no token builds (an agent
// with a persisted SVID needs none) but has no credential to present.
func TestJoinTokenWithoutToken(t *testing.T) {
	p, err := parse(t, confWith(""))
	if err != nil {
		t.Fatal(err)
	}
	na, err := p.NodeAttestor().Build(context.Background(), agentcatalog.NodeAttestorDeps{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := na.(agentcatalog.JoinToken).Credential(spiffeid.RequireTrustDomainFromString("example.org")); ok {
		t.Error("an empty token is a credential")
	}
	if _, err := na.Begin(context.Background()); err == nil || !strings.Contains(err.Error(), "no join token configured") {
		t.Errorf("Begin without a token: %v", err)
	}
}

// TestBuildErrorsNameThePlugin: a directory the key manager could not
// create is refused by the parse, with its line (so by validate); a build
// failure names the plugin.
func TestBuildErrorsNameThePlugin(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := writeFile(file); err != nil {
		t.Fatal(err)
	}
	conf := func(dir string) string {
		return strings.Replace(confWith(""), `KeyManager "memory" {}`, "KeyManager \"disk\" {\n        plugin_data {\n            directory = \""+dir+"\"\n        }\n    }", 1)
	}
	for _, dir := range []string{file, filepath.Join(file, "keys")} {
		_, err := parse(t, conf(dir))
		wantErr(t, err, `agent.conf:11: plugin KeyManager "disk": directory: `, "is not a directory")
	}

	dir := filepath.Join(t.TempDir(), "keys")
	p, err := parse(t, conf(dir))
	if err != nil {
		t.Fatal(err)
	}
	if err := writeFile(dir); err != nil { // after the parse
		t.Fatal(err)
	}
	_, err = p.KeyManager().Build(context.Background(), agentcatalog.KeyManagerDeps{})
	wantErr(t, err, `KeyManager "disk": `, "not a directory")
}

func TestBuiltIns(t *testing.T) {
	b := agentcatalog.BuiltIns()
	for typ, want := range map[string][]string{
		agentcatalog.NodeAttestorType:     {"join_token"},
		agentcatalog.KeyManagerType:       {"disk", "memory"},
		agentcatalog.WorkloadAttestorType: {"unix"},
	} {
		for _, n := range want {
			if !slices.Contains(b[typ], n) {
				t.Errorf("%s %q is not built in (%v)", typ, n, b[typ])
			}
		}
	}
}

// quickstart is the agent.conf of SPIRE's quickstart.
const quickstart = `agent {
    data_dir = "./.data"
    log_level = "DEBUG"
    server_address = "127.0.0.1"
    server_port = "8081"
    socket_path ="/tmp/spire-agent/public/api.sock"
    trust_bundle_path = "./conf/agent/dummy_root_ca.crt"
    trust_domain = "example.org"
}

plugins {
    NodeAttestor "join_token" {
        plugin_data {
        }
    }
    KeyManager "disk" {
        plugin_data {
            directory = "./.data"
        }
    }
    WorkloadAttestor "unix" {
        plugin_data {
        }
    }
}
`

// TestSPIREQuickstartAgent: spire-agent's quickstart agent.conf runs as is;
// a plugin Sigil lacks is named with its line instead of being ignored.
func TestSPIREQuickstartAgent(t *testing.T) {
	if _, err := parse(t, quickstart); err != nil {
		t.Fatalf("SPIRE quickstart agent.conf: %v", err)
	}
	// With the k8s attestor: k8s_test.go.
	withWindows := strings.Replace(quickstart, `    WorkloadAttestor "unix" {`, `    WorkloadAttestor "windows" {
        plugin_data {
        }
    }
    WorkloadAttestor "unix" {`, 1)
	_, err := parse(t, withWindows)
	wantErr(t, err, `agent.conf:21: unknown plugin WorkloadAttestor "windows"`)
}

// TestExampleConf: conf/agent/agent.conf parses against the catalog.
func TestExampleConf(t *testing.T) {
	t.Chdir("../../..")
	cfg, err := config.LoadAgent(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agentcatalog.Parse(cfg); err != nil {
		t.Fatalf("%s: %v", cfg.Path, err)
	}
}

func writeFile(path string) error { return os.WriteFile(path, []byte("x"), 0o600) }

// TestJoinTokenNeedsJoinTokenAttestor: a join token beside another
// NodeAttestor is refused (spire-agent would attest with the token instead
// of the configured attestor); without a token that attestor is fine.
func TestJoinTokenNeedsJoinTokenAttestor(t *testing.T) {
	other := strings.Replace(confWith(""), `NodeAttestor "join_token" {}`, `NodeAttestor "`+agentcatalog.OtherNodeAttestorForTests+`" {}`, 1)
	if _, err := parse(t, other); err != nil {
		t.Fatalf("another NodeAttestor without a join token: %v", err)
	}
	withToken := strings.Replace(other, `trust_domain = "example.org"`, "trust_domain = \"example.org\"\n    join_token = \"tok\"", 1)
	_, err := parse(t, withToken)
	wantErr(t, err, `agent.conf: a join token is set (join_token or -joinToken) but the NodeAttestor is "test_other": only NodeAttestor "join_token" uses it`)
	if strings.Contains(err.Error(), "tok\"") {
		t.Errorf("the error quotes the token: %v", err)
	}
}

// uncomment returns src with the commented-out plugin block whose first
// line is "    # "+header uncommented (one level of "# ": comments inside
// the block stay comments), and the active block starting "    "+replace
// removed (none when replace is ""); it fails the test if either is
// missing.
func uncomment(t *testing.T, src, header, replace string) string {
	t.Helper()
	lines := strings.Split(src, "\n")
	var out []string
	in, found, removing, removed := false, false, false, replace == ""
	for _, l := range lines {
		switch {
		case !in && l == "    # "+header:
			in, found = true, true
			out = append(out, "    "+header)
		case in:
			if !strings.HasPrefix(l, "    # ") && l != "    #" {
				t.Fatalf("commented block %q ends without its closing brace at %q", header, l)
			}
			out = append(out, "    "+strings.TrimPrefix(strings.TrimPrefix(l, "    #"), " "))
			in = l != "    # }"
		case !removing && replace != "" && l == "    "+replace:
			removing, removed = true, true
		case removing:
			removing = l != "    }"
		default:
			out = append(out, l)
		}
	}
	if !found || !removed {
		t.Fatalf("%q (found %v) or %q (found %v) missing", header, found, replace, removed)
	}
	return strings.Join(out, "\n")
}
