package config

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// The files every config fuzz target starts from, besides its own seeds.
const (
	fuzzServerJSON = `{
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
	fuzzAgentJSON = `{
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
)

// fuzzSeeds adds the example file conf/<example> and srcs.
func fuzzSeeds(f *testing.F, example string, srcs ...string) {
	data, err := os.ReadFile("../../conf/" + example)
	if err != nil {
		f.Fatalf("example configuration: %v", err)
	}
	f.Add(data)
	for _, s := range srcs {
		f.Add([]byte(s))
	}
}

// decodeErrLine is how every decoding error starts: the file name and, when
// the parser knows it, the line.
var decodeErrLine = regexp.MustCompile(`^fuzz\.conf(:[1-9][0-9]*)?: `)

// checkConfig holds the properties shared by server and agent files:
//   - decoding and validating never panic;
//   - every decoding error (syntax, unknown or mistyped key) names the file
//     on each of its lines, and a validation error names the file;
//   - a file that loads validates again unchanged, and decoding it twice
//     gives equal configurations (nothing depends on map order).
func checkConfig[C interface{ Validate() error }](t *testing.T, src []byte, decode func(string, []byte) (C, error), load func(string, []byte) (C, error)) {
	t.Helper()
	d, derr := decode("fuzz.conf", src)
	if derr != nil {
		for line := range strings.SplitSeq(derr.Error(), "\n") {
			if !decodeErrLine.MatchString(line) {
				t.Fatalf("decoding error line does not name the file and line: %q\nin: %q", line, derr)
			}
		}
	}
	c, err := load("fuzz.conf", src)
	if (derr != nil) && err == nil {
		t.Fatalf("decoding failed (%v) but loading succeeded", derr)
	}
	if err != nil {
		if !strings.HasPrefix(err.Error(), "fuzz.conf:") {
			t.Fatalf("error does not name the file: %q", err)
		}
		return
	}
	if !reflect.DeepEqual(c, d) {
		t.Fatalf("loading changed the decoded configuration:\n%+v\n%+v", d, c)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("a loaded configuration does not validate again: %v", err)
	}
	if !reflect.DeepEqual(c, d) {
		t.Fatalf("validating changed the configuration:\n%+v\n%+v", d, c)
	}
	again, err := load("fuzz.conf", src)
	if err != nil || !reflect.DeepEqual(c, again) {
		t.Fatalf("loading the same file twice gave\n%+v\n%+v (%v)", c, again, err)
	}
}

// FuzzParseServer runs arbitrary server configuration files, HCL and its
// JSON form, through the decoder and validation (see checkConfig).
func FuzzParseServer(f *testing.F) {
	fuzzSeeds(f, "server/server.conf", fullServerConf, minimalServerConf, fuzzServerJSON,
		"server {\n  trust_domain = \"a.org\"\n  bind_port = \n}\n",
		`{"server": {"trust_domain": "a.org",, }}`,
		"server { bind_port = \"99999\" }",
		"server { ca_ttl = \"-1h\" trust_domain = \"Bad\" }\nserver { log_level = 3 }",
		"plugins { DataStore \"sql\" { enabled = false } DataStore \"sql\" {} }",
		"plugins { Bogus \"x\" { plugin_cmd = \"/bin/sh\" } }",
		"server { socket_path = <<EOF\n/run/x\nEOF\n}",
		"server = [1, 2]",
		serverConfWith(federationConf, ""),
		"server { federation { federates_with = 1 bundle_endpoint { profile \"https_web\" { acme {} } } } }",
		"server { federation { federates_with \"a.org\" { bundle_endpoint_profile \"https_spiffe\" = 1 } } }",
		serverConfWith("    profiling_enabled = true\n    profiling_port = 6060\n    profiling_freq = 60\n    profiling_names = [\"heap\", \"cpu\"]\n", ""),
		"server { profiling_enabled = true profiling_freq = -1 profiling_names = [\"x\", 1] }",
		"[1]",
		"",
	)
	f.Fuzz(func(t *testing.T, src []byte) {
		checkConfig(t, src, parseServer, ParseServer)
	})
}

// FuzzParseAgent runs arbitrary agent configuration files, HCL and its JSON
// form, through the decoder and validation (see checkConfig).
func FuzzParseAgent(f *testing.F) {
	fuzzSeeds(f, "agent/agent.conf", fullAgentConf, agentConfWith("", ""), fuzzAgentJSON,
		agentConfWith("    cache_enabled = true\n", ""),
		agentConfWith("    availability_target = \"1h\"\n", ""),
		`{"agent": {"trust_domain": "example.org"}, "plugins": {"WorkloadAttestor": [{"unix": {}}]}}`,
		"agent { server_port = 0x1F90 }",
		"plugins { KeyManager \"disk\" { plugin_data = [] } }",
		"agent { trust_domain = \"\\u0000\" }",
		agentConfWith("    profiling_enabled = true\n    profiling_port = 6060\n", ""),
		"",
	)
	f.Fuzz(func(t *testing.T, src []byte) {
		checkConfig(t, src, parseAgent, ParseAgent)
	})
}

// TestHCLParserPanicIsSyntaxError: HCL v1's JSON scanner panics on a string
// escape cut off by the end of the file (found by FuzzParseServer); loading
// such a file is a syntax error naming the file and line, not a crash.
func TestHCLParserPanicIsSyntaxError(t *testing.T) {
	_, err := ParseServer("server.json", []byte("{\n  \"server\": {\"\\0"))
	wantErr(t, err, "server.json:2: syntax error: invalid character '0' in string escape code")
	_, err = ParseAgent("agent.json", []byte(`{"\0`))
	wantErr(t, err, "agent.json:1: syntax error:")
}
