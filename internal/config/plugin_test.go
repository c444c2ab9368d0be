package config

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// wantPlugins checks the plugins' types, names and positions, in order.
func wantPlugins(t *testing.T, ps []Plugin, want ...string) {
	t.Helper()
	got := make([]string, len(ps))
	for i, p := range ps {
		got[i] = p.String() + " " + p.Pos.String()
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("plugins = %q, want %q", got, want)
	}
}

// pluginConf is a server file whose plugin "Test" "t" (line 15) has the
// plugin_data body given (from line 17 on).
func pluginConf(body string) string {
	return serverConfWith("", "plugins {\n  Test \"t\" {\n    plugin_data {\n"+body+"    }\n  }\n}\n")
}

// testPlugin decodes the server file src and returns its plugin "Test"
// "t" (the config package knows no plugin type, so any is listed). Decoding
// errors are ignored: a key repeated in plugin_data is one (for the file),
// which the tests also want to see from the plugin's reader.
func testPlugin(t *testing.T, src string) Plugin {
	t.Helper()
	s := DefaultServer()
	_ = decodeFile("server.conf", []byte(src), "server", unsupportedServer, &s.HealthChecks, &s.Telemetry,
		func(d *decoder, b *block) { d.serverSection(b, s) }, &s.Plugins)
	for _, p := range s.Plugins {
		if p.Type == "Test" {
			return p
		}
	}
	t.Fatalf("no plugin Test in %v", s.Plugins)
	return Plugin{}
}

type testData struct {
	S     string
	I     int64
	P     int
	B     bool
	D     time.Duration
	L     []string
	SubS  string
	Named map[string]string
}

func parseTestData(d *PluginData) (testData, error) {
	var c testData
	d.String("s", &c.S)
	d.Int("i", &c.I)
	d.Port("p", &c.P)
	d.Bool("b", &c.B)
	d.Duration("d", &c.D)
	d.Strings("l", &c.L)
	d.Unsupported("spire_only")
	if sub := d.Block("sub"); sub != nil {
		sub.String("s", &c.SubS)
	}
	if named := d.Block("named"); named != nil {
		c.Named = map[string]string{}
		for _, k := range named.Keys() {
			if nb := named.Block(k); nb != nil {
				var v string
				nb.String("v", &v)
				c.Named[k] = v
			}
		}
	}
	if c.S == "bad" {
		d.Errorf("s", "s %q is not allowed", c.S)
	}
	if !d.Has("i") {
		d.Errorf("", "i must be configured")
	}
	return c, d.Done()
}

func TestPluginDataGetters(t *testing.T) {
	p := testPlugin(t, pluginConf(`      s = "text"
      i = "42"
      p = 8081
      b = true
      d = "90s"
      l = ["a", "b"]
      sub {
        s = "inner"
      }
      named = {
        "one" = { v = "1" }
        "two" = { v = "2" }
      }
`))
	if p.Pos.String() != "server.conf:15" || p.String() != `Test "t"` {
		t.Errorf("plugin %s at %s", p, p.Pos)
	}
	for range 2 { // Data returns a new reader each time
		c, err := parseTestData(p.Data())
		if err != nil {
			t.Fatal(err)
		}
		want := testData{S: "text", I: 42, P: 8081, B: true, D: 90 * time.Second, L: []string{"a", "b"}, SubS: "inner",
			Named: map[string]string{"one": "1", "two": "2"}}
		if !reflect.DeepEqual(c, want) {
			t.Fatalf("got %+v\nwant %+v", c, want)
		}
	}
}

func TestPluginDataErrors(t *testing.T) {
	p := testPlugin(t, pluginConf(`      s = "bad"
      p = 70000
      b = "yes"
      d = "soon"
      l = "a"
      extra = 1
      spire_only = true
      sub {
        s = "inner"
        deeper = 2
      }
      s = "again"
`))
	_, err := parseTestData(p.Data())
	want := []string{
		`server.conf:16: plugin Test "t": i must be configured`,
		`server.conf:17: plugin Test "t": s "bad" is not allowed`,
		`server.conf:18: invalid value for "p" in plugin_data of plugin Test "t": port 70000 out of range 0..65535`,
		`server.conf:19: invalid value for "b" in plugin_data of plugin Test "t": expected a bool (true or false), got string "yes"`,
		`server.conf:20: invalid value for "d" in plugin_data of plugin Test "t": "soon" is not a duration such as "90s" or "24h"`,
		`server.conf:21: invalid value for "l" in plugin_data of plugin Test "t": expected a list of strings, got string "a"`,
		`server.conf:22: unknown key "extra" in plugin_data of plugin Test "t"`,
		`server.conf:23: unsupported key "spire_only" in plugin_data of plugin Test "t": a SPIRE option Sigil does not implement`,
		`server.conf:26: unknown key "deeper" in block "sub" of plugin_data of plugin Test "t"`,
		`server.conf:28: duplicate key "s" in plugin_data of plugin Test "t" (first set on line 17)`,
	}
	if err == nil {
		t.Fatal("no error")
	}
	// In line order; a missing key is reported at plugin_data's line.
	got := strings.Split(err.Error(), "\n")
	if !reflect.DeepEqual(got, want) {
		t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestPluginDataAbsentAndEmpty(t *testing.T) {
	src := serverConfWith("", "plugins {\n  Test \"t\" {}\n}\n")
	p := testPlugin(t, src)
	d := p.Data()
	var s string
	if d.String("s", &s) || d.Has("s") || len(d.Keys()) != 0 || d.Block("sub") != nil {
		t.Error("an absent plugin_data reads as set")
	}
	d.Errorf("s", "s must be configured")
	wantErr(t, d.Done(), `server.conf:15: plugin Test "t": s must be configured`)
	if err := p.Data().Done(); err != nil {
		t.Errorf("empty plugin_data: %v", err)
	}
}

func TestPluginDataJSON(t *testing.T) {
	src := `{
  "server": {"trust_domain": "example.org", "data_dir": "d"},
  "plugins": {
    "Test": {"t": {"plugin_data": {
      "s": "text",
      "l": ["x"],
      "bogus": 1
    }}}
  }
}`
	p := testPlugin(t, src)
	var s string
	var l []string
	d := p.Data()
	d.String("s", &s)
	d.Strings("l", &l)
	wantErr(t, d.Done(), `server.conf:7: unknown key "bogus" in plugin_data of plugin Test "t"`)
	if s != "text" || !reflect.DeepEqual(l, []string{"x"}) {
		t.Errorf("s %q l %q", s, l)
	}
}

func TestServerPluginsListed(t *testing.T) {
	src := serverConfWith("", `plugins {
  NodeAttestor "join_token" {}
  UpstreamAuthority "disk" {
    enabled = false
  }
  UpstreamAuthority "spire" {
    plugin_data {
      server_address = "up"
      server_port = 8081
      workload_api_socket = "/s"
    }
  }
}
`)
	s, err := ParseServer("server.conf", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	// Disabled plugins are left out; the order is the file's.
	wantPlugins(t, s.Plugins, `DataStore "sql" server.conf:6`, `KeyManager "memory" server.conf:12`,
		`NodeAttestor "join_token" server.conf:15`, `UpstreamAuthority "spire" server.conf:19`)
	var addr string
	var port int
	d := s.Plugins[3].Data()
	d.String("server_address", &addr)
	d.Port("server_port", &port)
	wantErr(t, d.Done(), `server.conf:23: unknown key "workload_api_socket"`)
	if addr != "up" || port != 8081 {
		t.Errorf("address %q port %d", addr, port)
	}
}

func TestNewPlugin(t *testing.T) {
	p := NewPlugin("Test", "t", map[string]any{
		"s": "a \"quoted\" ${text}\n", "i": int64(42), "p": 8081, "b": true, "d": 90 * time.Second,
		"l": []string{"a", "b"}, "sub": map[string]any{"s": "inner"},
		"named": map[string]any{"one": map[string]any{"v": "1"}},
	})
	c, err := parseTestData(p.Data())
	if err != nil {
		t.Fatal(err)
	}
	want := testData{S: "a \"quoted\" ${text}\n", I: 42, P: 8081, B: true, D: 90 * time.Second, L: []string{"a", "b"}, SubS: "inner",
		Named: map[string]string{"one": "1"}}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("got %+v\nwant %+v", c, want)
	}
	// Errors name the code as their file.
	bad := NewPlugin("Test", "t", map[string]any{"p": "http", "x": 1})
	_, err = parseTestData(bad.Data())
	wantErr(t, err, `(configuration built in code): invalid value for "p" in plugin_data of plugin Test "t": expected an integer`,
		`(configuration built in code): unknown key "x"`, `(configuration built in code): plugin Test "t": i must be configured`)

	defer func() {
		if recover() == nil {
			t.Error("NewPlugin accepted a float")
		}
	}()
	NewPlugin("Test", "t", map[string]any{"f": 1.5})
}

// TestPluginDataInts: a list of integers from HCL (numbers or quoted), JSON
// and code; anything else is a type error naming the key.
func TestPluginDataInts(t *testing.T) {
	read := func(p Plugin) ([]int64, error) {
		var l []int64
		d := p.Data()
		d.Ints("l", &l)
		return l, d.Done()
	}
	for name, p := range map[string]Plugin{
		"hcl":  testPlugin(t, pluginConf("      l = [0, \"7\", 16]\n")),
		"json": testPlugin(t, `{"server": {"trust_domain": "example.org", "data_dir": "d"}, "plugins": {"Test": {"t": {"plugin_data": {"l": [0, 7, 16]}}}}}`),
		"code": NewPlugin("Test", "t", map[string]any{"l": []int{0, 7, 16}}),
	} {
		l, err := read(p)
		if err != nil || !reflect.DeepEqual(l, []int64{0, 7, 16}) {
			t.Errorf("%s: %v, %v", name, l, err)
		}
	}
	for _, body := range []string{"      l = 7\n", "      l = [\"x\"]\n", "      l = [1.5]\n", "      l = [true]\n"} {
		_, err := read(testPlugin(t, pluginConf(body)))
		wantErr(t, err, `server.conf:17: invalid value for "l" in plugin_data of plugin Test "t": expected a list of integers`)
	}
}
