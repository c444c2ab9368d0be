package config

import (
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/hcl/hcl/ast"
	"github.com/hashicorp/hcl/hcl/token"
)

// Pos is where something is declared in a configuration file. Line is 0
// when unknown (a configuration built in code).
type Pos struct {
	File string
	Line int
}

// String is "file:line", or "file" without a line.
func (p Pos) String() string {
	if p.Line > 0 {
		return p.File + ":" + strconv.Itoa(p.Line)
	}
	return p.File
}

// Errorf returns an error starting with the position: "file:line: msg".
func (p Pos) Errorf(format string, args ...any) error {
	return fmt.Errorf("%s: %s", p, fmt.Sprintf(format, args...))
}

// Plugin is one enabled plugin of a configuration's plugins section:
// `Type "Name" { plugin_data { ... } }`. The configuration keeps its
// plugin_data unparsed: the plugin reads it (Data) and reports what it does
// not know, so the config package knows no plugin; the binary's catalog
// (internal/catalog/...) knows which types and names exist.
//
// Disabled plugins (enabled = false) are left out, as SPIRE does; external
// plugins (plugin_cmd ...) and plugin_data_file are refused while decoding.
type Plugin struct {
	Type string // "NodeAttestor"
	Name string // "join_token"
	Pos  Pos    // of the declaration

	data    []*entry  // plugin_data's entries (nil when absent)
	dataPos token.Pos // of plugin_data, or of the declaration
}

// String is how messages name the plugin: `NodeAttestor "join_token"`.
func (p Plugin) String() string { return fmt.Sprintf("%s %q", p.Type, p.Name) }

// Data returns a reader of the plugin's plugin_data (empty when the
// declaration has none). Each call returns a new reader, so a
// configuration can be checked (validate) and then used (run) alike.
func (p Plugin) Data() *PluginData {
	d := &decoder{file: p.Pos.File}
	desc := "plugin_data of plugin " + p.String()
	return &PluginData{
		b:      d.newBlock(desc, p.data),
		plugin: p.String(),
		pos:    p.dataPos,
	}
}

// NewPlugin builds a plugin declaration in code (for configurations built
// without a file: tests, `sigil-server dev`). data holds plugin_data:
// values are string, bool, int, int64, time.Duration (written as its
// string, "1h0m0s"), []string, []int, or map[string]any for a nested block. It
// panics on any other type: a programming error.
func NewPlugin(typ, name string, data map[string]any) Plugin {
	return Plugin{Type: typ, Name: name, Pos: Pos{File: builtInCode}, data: codeEntries(data)}
}

// builtInCode names the "file" of a configuration built in code.
const builtInCode = "(configuration built in code)"

func codeEntries(data map[string]any) []*entry {
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]*entry, 0, len(keys))
	for _, k := range keys {
		out = append(out, codeEntry(k, data[k]))
	}
	return out
}

func codeEntry(key string, v any) *entry {
	lit := func(t token.Type, text string) *ast.LiteralType {
		// JSON: the text is unquoted by strconv.Unquote, the inverse of
		// strconv.Quote.
		return &ast.LiteralType{Token: token.Token{Type: t, Text: text, JSON: true}}
	}
	str := func(s string) *ast.LiteralType { return lit(token.STRING, strconv.Quote(s)) }
	e := &entry{name: key}
	switch v := v.(type) {
	case string:
		e.val = str(v)
	case bool:
		e.val = lit(token.BOOL, strconv.FormatBool(v))
	case int:
		e.val = lit(token.NUMBER, strconv.Itoa(v))
	case int64:
		e.val = lit(token.NUMBER, strconv.FormatInt(v, 10))
	case time.Duration:
		e.val = str(v.String())
	case []string:
		l := &ast.ListType{}
		for _, s := range v {
			l.List = append(l.List, str(s))
		}
		e.val = l
	case []int:
		l := &ast.ListType{}
		for _, n := range v {
			l.List = append(l.List, lit(token.NUMBER, strconv.Itoa(n)))
		}
		e.val = l
	case map[string]any:
		e.obj, e.kids = true, codeEntries(v)
	default:
		panic(fmt.Sprintf("config.NewPlugin: plugin_data %q has a value of type %T", key, v))
	}
	return e
}

// PluginData reads one plugin's plugin_data (or a block nested in it). Each
// getter reads a key and marks it known; a value of the wrong type is
// recorded as an error naming the key and its file:line. Done reports the
// keys no getter asked for and returns every error recorded. The getters
// return whether the key was set with a value of the right type; an absent
// key leaves *dst as it is (the plugin's default).
//
// A plugin's parse function reads every key it supports, checks values
// (Errorf), then returns Done's error:
//
//	func ParseConfig(d *config.PluginData) (Config, error) {
//		var c Config
//		d.String("cert_path", &c.CertPath)
//		if c.CertPath == "" {
//			d.Errorf("", "cert_path must be configured")
//		}
//		return c, d.Done()
//	}
type PluginData struct {
	b      *block
	plugin string    // `NodeAttestor "join_token"`
	pos    token.Pos // of this block
	kids   []*PluginData
	done   bool
}

// String reads a string (a bare number is accepted as its text, as HCL's
// decoder does).
func (d *PluginData) String(key string, dst *string) bool { return d.b.str(key, dst) }

// Int reads an integer (a quoted one, "8081", too).
func (d *PluginData) Int(key string, dst *int64) bool { return d.b.integer(key, dst) }

// Port reads a TCP port number, 0..65535.
func (d *PluginData) Port(key string, dst *int) bool { return d.b.port(key, dst) }

// Bool reads true or false.
func (d *PluginData) Bool(key string, dst *bool) bool { return d.b.boolean(key, dst) }

// Duration reads a Go duration string such as "90s" or "24h".
func (d *PluginData) Duration(key string, dst *time.Duration) bool { return d.b.duration(key, dst) }

// Strings reads a list of strings.
func (d *PluginData) Strings(key string, dst *[]string) bool { return d.b.strings(key, dst) }

// Ints reads a list of integers (quoted ones, "7", too).
func (d *PluginData) Ints(key string, dst *[]int64) bool { return d.b.ints(key, dst) }

// Block returns the nested block key, or nil when it is absent (or not a
// block: an error is recorded). Its errors, and its unknown keys, are
// reported by the Done of the plugin_data it is in.
func (d *PluginData) Block(key string) *PluginData {
	sb := d.b.sub(key, fmt.Sprintf("block %q of %s", key, d.b.desc))
	if sb == nil {
		return nil
	}
	kid := &PluginData{b: sb, plugin: d.plugin, pos: d.b.kids[key].pos}
	d.kids = append(d.kids, kid)
	return kid
}

// Keys returns the keys present in the block, in file order (to read a
// block of named blocks, such as one per cluster).
func (d *PluginData) Keys() []string { return slices.Clone(d.b.order) }

// Has reports whether key is present (with any value).
func (d *PluginData) Has(key string) bool { return d.b.kids[key] != nil }

// Unsupported names SPIRE keys of this plugin that Sigil knowingly does not
// implement: when present they are reported as unsupported rather than
// unknown.
func (d *PluginData) Unsupported(keys ...string) {
	if d.b.unsupported == nil {
		d.b.unsupported = map[string]bool{}
	}
	for _, k := range keys {
		d.b.unsupported[k] = true
	}
}

// Errorf records an error about key: "file:line: plugin T "name": msg",
// with the line of key, or of the block when key is "" or absent (for
// "x must be configured").
func (d *PluginData) Errorf(key string, format string, args ...any) {
	pos := d.pos
	if e := d.b.kids[key]; key != "" && e != nil {
		pos = e.pos
	}
	d.b.d.errorf(pos, "plugin %s: %s", d.plugin, fmt.Sprintf(format, args...))
}

// Done reports the keys of the block (and of the blocks read from it) that
// no getter asked for, then returns every error recorded in the
// plugin_data, in line order, or nil. Call it once the plugin has read all
// it supports.
func (d *PluginData) Done() error {
	d.finish()
	if len(d.b.d.errs) == 0 {
		return nil
	}
	return d.b.d.err()
}

func (d *PluginData) finish() {
	if d.done {
		return
	}
	d.done = true
	for _, k := range d.kids {
		k.finish()
	}
	d.b.done()
}

// SetPlugin replaces the plugin of p's type and name in s.Plugins, or adds
// p (for configurations built in code).
func (s *Server) SetPlugin(p Plugin) { s.Plugins = setPlugin(s.Plugins, p) }

// SetPlugin replaces the plugin of p's type and name in a.Plugins, or adds
// p (for configurations built in code).
func (a *Agent) SetPlugin(p Plugin) { a.Plugins = setPlugin(a.Plugins, p) }

func setPlugin(ps []Plugin, p Plugin) []Plugin {
	for i := range ps {
		if ps[i].Type == p.Type && ps[i].Name == p.Name {
			ps[i] = p
			return ps
		}
	}
	return append(ps, p)
}
