package config

import (
	"errors"
	"flag"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

const fullAgentConf = `agent {
    server_address = "spire-server.example.org"
    server_port = "8081"
    socket_path = "/run/sigil/agent.sock"
    trust_domain = "example.org"
    trust_bundle_path = "/etc/sigil/bootstrap.crt"
    trust_bundle_format = "spiffe"
    data_dir = "/var/lib/sigil/agent"
    join_token = "2b8e2c7a-1c3b-4a8e-9d0f-0e6b1d2a3c4f"
    log_level = "warn"
    log_format = "json"
    log_file = "/var/log/sigil-agent.log"
    availability_target = "48h"
    allowed_foreign_jwt_claims = ["iat", "iss"]
    jwt_svid_cache_max_size = 500
    disable_sds_api = true
    sds {
        default_svid_name = "envoy-svid"
        default_bundle_name = ""
        default_all_bundles_name = "TRUST"
        disable_spiffe_cert_validation = true
    }
}

plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "disk" {
        plugin_data {
            directory = "/var/lib/sigil/agent/keys"
        }
    }
    WorkloadAttestor "unix" {
        plugin_data {
            discover_workload_path = true
            workload_size_limit = -1
        }
    }
}

health_checks {
    listener_enabled = true
    bind_port = 8082
}
`

// agentConfWith builds a valid 14-line agent config. agentExtra is inserted
// in the agent block at line 6; tail starts on line 15 when agentExtra is empty.
func agentConfWith(agentExtra, tail string) string {
	return `agent {
    server_address = "127.0.0.1"
    server_port = 8081
    trust_domain = "example.org"
    trust_bundle_path = "bundle.pem"
` + agentExtra + `}
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

func TestParseAgentFull(t *testing.T) {
	a, err := ParseAgent("agent.conf", []byte(fullAgentConf))
	if err != nil {
		t.Fatal(err)
	}
	want := &Agent{
		Path:                    "agent.conf",
		ServerAddress:           "spire-server.example.org",
		ServerPort:              8081,
		SocketPath:              "/run/sigil/agent.sock",
		DataDir:                 "/var/lib/sigil/agent",
		TrustBundlePath:         "/etc/sigil/bootstrap.crt",
		TrustBundleFormat:       "spiffe",
		JoinToken:               "2b8e2c7a-1c3b-4a8e-9d0f-0e6b1d2a3c4f",
		LogLevel:                "warn",
		LogFormat:               "json",
		LogFile:                 "/var/log/sigil-agent.log",
		AvailabilityTarget:      48 * time.Hour,
		AllowedForeignJWTClaims: []string{"iat", "iss"},
		JWTSVIDCacheMaxSize:     500,
		HealthChecks:            HealthChecks{ListenerEnabled: true, BindAddress: "localhost", BindPort: 8082, LivePath: "/live", ReadyPath: "/ready"},
		SDS:                     SDS{DefaultSVIDName: "envoy-svid", DefaultBundleName: "ROOTCA", DefaultAllBundlesName: "TRUST", DisableSPIFFECertValidation: true},
		DisableSDSAPI:           true,
	}
	if a.TrustDomain.Name() != "example.org" {
		t.Errorf("TrustDomain = %q", a.TrustDomain)
	}
	want.TrustDomain = a.TrustDomain
	wantPlugins(t, a.Plugins, `NodeAttestor "join_token" agent.conf:26`, `KeyManager "disk" agent.conf:29`, `WorkloadAttestor "unix" agent.conf:34`)
	want.Plugins = a.Plugins
	if !reflect.DeepEqual(a, want) {
		t.Errorf("got  %+v\nwant %+v", a, want)
	}
}

func TestParseAgentDefaults(t *testing.T) {
	a, err := ParseAgent("agent.conf", []byte(agentConfWith("", "")))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"socket_path", a.SocketPath, "/tmp/spire-agent/public/api.sock"},
		{"data_dir", a.DataDir, "."},
		{"trust_bundle_format", a.TrustBundleFormat, "pem"},
		{"log_level", a.LogLevel, "INFO"},
		{"log_format", a.LogFormat, "text"},
		{"availability_target", a.AvailabilityTarget, time.Duration(0)},
		{"health_checks", a.HealthChecks, HealthChecks{BindAddress: "localhost", BindPort: 80, LivePath: "/live", ReadyPath: "/ready"}},
		{"join_token", a.JoinToken, ""},
		{"insecure_bootstrap", a.InsecureBootstrap, false},
		{"sds", a.SDS, SDS{DefaultSVIDName: "default", DefaultBundleName: "ROOTCA", DefaultAllBundlesName: "ALL"}},
		{"disable_sds_api", a.DisableSDSAPI, false},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestAgentUnknownConfiguration(t *testing.T) {
	cases := []struct {
		name string
		src  string
		want []string
	}{
		{"unknown key in agent block",
			agentConfWith("    cache_enabled = true\n", ""),
			[]string{`agent.conf:6: unknown key "cache_enabled" in agent block`}},
		{"unsupported SPIRE agent key",
			agentConfWith("    retry_bootstrap = true\n", ""),
			[]string{`agent.conf:6: unsupported key "retry_bootstrap" in agent block`}},
		{"unknown key in sds",
			agentConfWith("    sds {\n      default_svid = \"x\"\n    }\n", ""),
			[]string{`agent.conf:7: unknown key "default_svid" in sds block`}},
		{"sds name not a string",
			agentConfWith("    sds {\n      default_bundle_name = [\"x\"]\n    }\n", ""),
			[]string{`agent.conf:7: invalid value for "default_bundle_name" in sds block: expected a string`}},
		{"sds name too long",
			agentConfWith("    sds {\n      default_svid_name = \""+strings.Repeat("n", 256)+"\"\n    }\n", ""),
			[]string{`agent.conf:7: invalid value for "default_svid_name" in sds block: longer than 255 bytes`}},
		{"sds validation not a bool",
			agentConfWith("    sds {\n      disable_spiffe_cert_validation = \"yes\"\n    }\n", ""),
			[]string{`agent.conf:7: invalid value for "disable_spiffe_cert_validation" in sds block: expected a bool`}},
		{"sds as a key",
			agentConfWith("    sds = \"on\"\n", ""),
			[]string{`agent.conf:6: invalid value for "sds" in agent block: expected a block`}},
		{"server block in an agent file",
			agentConfWith("", "server {\n  trust_domain = \"example.org\"\n}\n"),
			[]string{`agent.conf:15: unknown block "server" in top level`}},
		{"external plugin",
			agentConfWith("", "plugins {\n  WorkloadAttestor \"mine\" {\n    plugin_cmd = \"/bin/mine\"\n  }\n}\n"),
			[]string{`agent.conf:17:`, "Sigil has only built-in plugins"}},
		{"insecure_bootstrap string",
			agentConfWith("    insecure_bootstrap = \"true\"\n", ""),
			[]string{`agent.conf:6: invalid value for "insecure_bootstrap" in agent block: expected a bool`}},
		{"bad trust domain",
			strings.Replace(agentConfWith("", ""), `"example.org"`, `"Example.ORG"`, 1),
			[]string{`agent.conf:4: invalid trust_domain "Example.ORG"`}},
		{"negative jwt_svid_cache_max_size",
			agentConfWith("    jwt_svid_cache_max_size = -1\n", ""),
			[]string{"jwt_svid_cache_max_size must not be negative"}},
		{"bad availability_target",
			agentConfWith("    availability_target = \"2 days\"\n", ""),
			[]string{`agent.conf:6: invalid value for "availability_target"`, "not a duration"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseAgent("agent.conf", []byte(c.src))
			wantErr(t, err, c.want...)
		})
	}
}

func TestAgentValidation(t *testing.T) {
	base := agentConfWith("", "")
	cases := []struct {
		name string
		src  string
		want string
	}{
		{"no server_address", strings.Replace(base, `server_address = "127.0.0.1"`, "", 1), "server_address must be configured"},
		{"no server_port", strings.Replace(base, `server_port = 8081`, "", 1), "server_port 0 out of range 1..65535"},
		{"no trust_domain", strings.Replace(base, `trust_domain = "example.org"`, "", 1), "agent.conf: trust_domain must be configured"},
		{"no bootstrap trust", strings.Replace(base, `trust_bundle_path = "bundle.pem"`, "", 1), "trust_bundle_path or trust_bundle_url must be configured unless insecure_bootstrap is set"},
		{"path and url", agentConfWith("    trust_bundle_url = \"https://example.org/bundle\"\n", ""), "only one of trust_bundle_url or trust_bundle_path"},
		{"insecure and path", agentConfWith("    insecure_bootstrap = true\n", ""), "only one of insecure_bootstrap, trust_bundle_url or trust_bundle_path"},
		{"http bundle url", strings.Replace(base, `trust_bundle_path = "bundle.pem"`, `trust_bundle_url = "http://example.org/bundle"`, 1), `trust_bundle_url "http://example.org/bundle" must be an https:// URL`},
		{"bad bundle format", agentConfWith("    trust_bundle_format = \"der\"\n", ""), `invalid trust_bundle_format "der"`},
		{"short availability target", agentConfWith("    availability_target = \"1h\"\n", ""), "availability_target must be at least 24h0m0s"},
		{"bad log level", agentConfWith("    log_level = \"chatty\"\n", ""), `log_level: invalid log level "chatty"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseAgent("agent.conf", []byte(c.src))
			wantErr(t, err, c.want)
		})
	}

	// Valid bootstrap alternatives.
	for _, src := range []string{
		strings.Replace(base, `trust_bundle_path = "bundle.pem"`, `trust_bundle_url = "https://example.org/bundle"`, 1),
		strings.Replace(base, `trust_bundle_path = "bundle.pem"`, `insecure_bootstrap = true`, 1),
	} {
		if _, err := ParseAgent("agent.conf", []byte(src)); err != nil {
			t.Errorf("valid bootstrap rejected: %v", err)
		}
	}
}

func TestLoadAgentFlagOverrides(t *testing.T) {
	path := writeFile(t, "agent.conf", agentConfWith("", ""))
	a, err := LoadAgent([]string{
		"-config", path,
		"-joinToken", "tok",
		"-serverAddress", "10.0.0.1",
		"-serverPort", "9443",
		"-socketPath", "/tmp/a.sock",
		"-trustBundle", "/etc/b.pem",
		"-dataDir", "/srv/agent",
		"-logLevel", "DEBUG",
		"-logFormat", "json",
		"-logFile", "/tmp/agent.log",
		"-trustDomain", "flag.test",
		"-trustBundleFormat", "spiffe",
	})
	if err != nil {
		t.Fatal(err)
	}
	if a.JoinToken != "tok" || a.ServerAddress != "10.0.0.1" || a.ServerPort != 9443 || a.SocketPath != "/tmp/a.sock" ||
		a.TrustBundlePath != "/etc/b.pem" || a.DataDir != "/srv/agent" || a.LogLevel != "DEBUG" || a.LogFormat != "json" ||
		a.LogFile != "/tmp/agent.log" || a.TrustDomain.Name() != "flag.test" || a.TrustBundleFormat != "spiffe" {
		t.Errorf("flags not applied: %+v", a)
	}

	// -trustBundleUrl replaces the file's path only if the path is cleared:
	// both set is an error, as in SPIRE.
	_, err = LoadAgent([]string{"-config", path, "-trustBundleUrl", "https://example.org/b"})
	wantErr(t, err, "only one of trust_bundle_url or trust_bundle_path")
	a, err = LoadAgent([]string{"-config", path, "-trustBundle", "", "-trustBundleUrl", "https://example.org/b"})
	if err != nil {
		t.Fatal(err)
	}
	if a.TrustBundleURL != "https://example.org/b" || a.TrustBundlePath != "" {
		t.Errorf("bundle flags: %+v", a)
	}
	a, err = LoadAgent([]string{"-config", path, "-trustBundle", "", "-insecureBootstrap"})
	if err != nil {
		t.Fatal(err)
	}
	if !a.InsecureBootstrap {
		t.Error("-insecureBootstrap not applied")
	}
}

func TestLoadAgentErrors(t *testing.T) {
	path := writeFile(t, "agent.conf", agentConfWith("", ""))
	_, err := LoadAgent([]string{"-config", path, "-retryBootstrap"})
	wantErr(t, err, "flag provided but not defined: -retryBootstrap")

	_, err = LoadAgent([]string{"-config", path, "-serverPort", "99999"})
	wantErr(t, err, "server_port 99999 out of range")

	_, err = LoadAgent([]string{"-help"})
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-help: got %v, want flag.ErrHelp", err)
	}
	wantErr(t, errors.New(err.(*HelpError).FlagUsage()), "-joinToken", "-serverAddress", "-serverPort", "-socketPath", "-trustBundle", "-trustBundleUrl", "-dataDir", "-logLevel", "-logFormat")

	bad := writeFile(t, "agent.conf", agentConfWith("    cache_enabled = true\n", ""))
	_, err = LoadAgent([]string{"-config", bad})
	wantErr(t, err, bad+`:6: unknown key "cache_enabled" in agent block`)
}

func TestParseAgentJSON(t *testing.T) {
	src := `{
  "agent": {
    "server_address": "127.0.0.1",
    "server_port": "8081",
    "trust_domain": "example.org",
    "insecure_bootstrap": true
  },
  "plugins": {
    "NodeAttestor": {"join_token": {"plugin_data": {}}},
    "KeyManager": {"disk": {"plugin_data": {"directory": "./data"}}},
    "WorkloadAttestor": {"unix": {"plugin_data": {"discover_workload_path": true}}}
  }
}`
	a, err := ParseAgent("agent.json", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if a.ServerPort != 8081 || !a.InsecureBootstrap {
		t.Errorf("unexpected %+v", a)
	}
	wantPlugins(t, a.Plugins, `NodeAttestor "join_token" agent.json:8`, `KeyManager "disk" agent.json:8`, `WorkloadAttestor "unix" agent.json:8`)
	var dir string
	if d := a.Plugins[1].Data(); !d.String("directory", &dir) || dir != "./data" {
		t.Errorf("KeyManager plugin_data directory = %q", dir)
	}
}

// TestExampleConfAllowedForeignJWTClaims: the commented
// allowed_foreign_jwt_claims of conf/agent/agent.conf parses when
// uncommented.
func TestExampleConfAllowedForeignJWTClaims(t *testing.T) {
	src, err := os.ReadFile("../../conf/agent/agent.conf")
	if err != nil {
		t.Fatal(err)
	}
	const old = "    # allowed_foreign_jwt_claims = ["
	if !strings.Contains(string(src), old) {
		t.Fatalf("conf/agent/agent.conf has no %q", old)
	}
	a, err := ParseAgent("agent.conf", []byte(strings.Replace(string(src), old, "    allowed_foreign_jwt_claims = [", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(a.AllowedForeignJWTClaims, []string{"iat", "iss"}) {
		t.Errorf("AllowedForeignJWTClaims = %q", a.AllowedForeignJWTClaims)
	}
}
