// Package config reads the SPIRE-shaped HCL (or HCL's JSON form)
// configuration files and command-line flags of sigil-server and
// sigil-agent into typed, validated structs.
//
// Key names, defaults and flag names follow SPIRE, so a SPIRE server.conf or
// agent.conf that uses only features Sigil implements runs unchanged.
// Anything else — an unknown or unsupported key or block — stops start-up
// with an error naming it and its file:line; Sigil never silently ignores
// configuration.
//
// The plugins section is read, not interpreted: each enabled plugin is a
// Plugin (type, name, position) whose plugin_data the plugin itself parses
// through PluginData, with the same file:line errors. Which plugin types and
// names exist is each binary's catalog's business (internal/catalog/server,
// internal/catalog/agent).
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/hashicorp/hcl"
	"github.com/hashicorp/hcl/hcl/ast"
	hclparser "github.com/hashicorp/hcl/hcl/parser"
	"github.com/hashicorp/hcl/hcl/token"
)

// entry is one key of a normalized HCL object. HCL's multi-key items
// (`DataStore "sql" { ... }`) and the flattened objects of HCL's JSON parser
// are expanded into nested single-key entries, so both syntaxes look alike.
type entry struct {
	name string
	pos  token.Pos // position of the key
	obj  bool      // the value is an object (block)
	kids []*entry  // children, when obj
	val  ast.Node  // the value, when !obj: *ast.LiteralType or *ast.ListType
}

func toEntries(list *ast.ObjectList) []*entry {
	if list == nil {
		return nil
	}
	out := make([]*entry, 0, len(list.Items))
	for _, item := range list.Items {
		if len(item.Keys) == 0 {
			continue
		}
		out = append(out, toEntry(item.Keys, item.Val, item.Assign))
	}
	return out
}

// toEntry builds the entry for an item's keys. HCL's JSON parser records no
// position on keys, only on the ':' (assign); for JSON objects it flattened
// into multi-key items that is the outermost key's ':'.
func toEntry(keys []*ast.ObjectKey, val ast.Node, assign token.Pos) *entry {
	pos := keys[0].Pos()
	if !pos.IsValid() {
		pos = assign
	}
	e := &entry{name: keyName(keys[0]), pos: pos}
	if len(keys) > 1 {
		e.obj = true
		e.kids = []*entry{toEntry(keys[1:], val, assign)}
		return e
	}
	if ot, ok := val.(*ast.ObjectType); ok {
		e.obj = true
		e.kids = toEntries(ot.List)
		return e
	}
	e.val = val
	return e
}

func keyName(k *ast.ObjectKey) string {
	if k.Token.Type == token.STRING {
		if s, ok := tokenString(k.Token); ok {
			return s
		}
	}
	return k.Token.Text
}

// tokenString returns the unquoted value of a STRING or HEREDOC token.
func tokenString(t token.Token) (s string, ok bool) {
	defer func() {
		// token.Value panics on malformed input; the parser has already
		// rejected such input, but never let a config crash the process.
		if recover() != nil {
			s, ok = "", false
		}
	}()
	v, ok := t.Value().(string)
	return v, ok
}

// decoder reads one configuration file and collects every error found in it.
type decoder struct {
	file string
	errs []lineErr
}

type lineErr struct {
	line int
	err  error
}

func (d *decoder) errorf(pos token.Pos, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if pos.Line > 0 {
		d.errs = append(d.errs, lineErr{pos.Line, fmt.Errorf("%s:%d: %s", d.file, pos.Line, msg)})
		return
	}
	d.errs = append(d.errs, lineErr{0, fmt.Errorf("%s: %s", d.file, msg)})
}

// err joins the errors found, in line order.
func (d *decoder) err() error {
	slices.SortStableFunc(d.errs, func(a, b lineErr) int { return a.line - b.line })
	errs := make([]error, len(d.errs))
	for i, e := range d.errs {
		errs[i] = e.err
	}
	return errors.Join(errs...)
}

// parseFile parses HCL or JSON source into root entries.
func parseFile(name string, src []byte) ([]*entry, error) {
	f, err := parseHCL(src)
	if err != nil {
		var pe *hclparser.PosError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("%s:%d: syntax error: %w", name, pe.Pos.Line, pe.Err)
		}
		return nil, fmt.Errorf("%s: syntax error: %w", name, err)
	}
	list, ok := f.Node.(*ast.ObjectList)
	if !ok {
		return nil, fmt.Errorf("%s: syntax error: expected a list of keys and blocks at top level", name)
	}
	return toEntries(list), nil
}

// parseHCL runs HCL's parser, turning its panics into errors: HCL v1's JSON
// scanner panics on some malformed input (`{"\0`, hashicorp/hcl#194), which
// must stop start-up with a syntax error, not crash it. For JSON input the
// error names the line encoding/json finds the first error on.
func parseHCL(src []byte) (f *ast.File, err error) {
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		f, err = nil, fmt.Errorf("the file is neither valid HCL nor valid JSON (the parser failed: %v)", r)
		var se *json.SyntaxError
		if bytes.HasPrefix(bytes.TrimLeftFunc(src, unicode.IsSpace), []byte("{")) && // HCL's test for JSON
			errors.As(json.Unmarshal(src, new(any)), &se) {
			line := 1 + bytes.Count(src[:min(int(se.Offset), len(src))], []byte("\n"))
			err = &hclparser.PosError{Pos: token.Pos{Line: line}, Err: se}
		}
	}()
	return hcl.ParseBytes(src)
}

// block is a section of the file whose keys are checked against a known set:
// every getter marks its key used, and done reports the rest as unknown.
type block struct {
	d     *decoder
	desc  string // "server block", "top level", ...
	kids  map[string]*entry
	order []string
	used  map[string]bool
	// unsupported names SPIRE options Sigil knowingly does not implement,
	// for a clearer message than "unknown".
	unsupported map[string]bool
}

// newBlock groups entries by name. Repeated blocks merge (as HCL's decoder
// does for `server { } server { }`); a repeated plain key is an error.
func (d *decoder) newBlock(desc string, es []*entry) *block {
	b := &block{d: d, desc: desc, kids: map[string]*entry{}, used: map[string]bool{}}
	for _, e := range es {
		prev, ok := b.kids[e.name]
		if !ok {
			b.kids[e.name] = e
			b.order = append(b.order, e.name)
			continue
		}
		if prev.obj && e.obj {
			kids := append(append([]*entry{}, prev.kids...), e.kids...)
			b.kids[e.name] = &entry{name: e.name, pos: prev.pos, obj: true, kids: kids}
			continue
		}
		d.errorf(e.pos, "duplicate key %q in %s (first set on line %d)", e.name, desc, prev.pos.Line)
	}
	return b
}

// done reports every entry that no getter asked for.
func (b *block) done() {
	for _, name := range b.order {
		if b.used[name] {
			continue
		}
		e := b.kids[name]
		kind := "key"
		if e.obj {
			kind = "block"
		}
		if b.unsupported[name] {
			b.d.errorf(e.pos, "unsupported %s %q in %s: a SPIRE option Sigil does not implement", kind, name, b.desc)
			continue
		}
		b.d.errorf(e.pos, "unknown %s %q in %s", kind, name, b.desc)
	}
}

// take returns the entry for key, marking it used, or nil if absent.
func (b *block) take(key string) *entry {
	e := b.kids[key]
	if e != nil {
		b.used[key] = true
	}
	return e
}

func (b *block) typeErr(e *entry, want string) {
	b.d.errorf(e.pos, "invalid value for %q in %s: expected %s, got %s", e.name, b.desc, want, describe(e))
}

func describe(e *entry) string {
	if e.obj {
		return "a block"
	}
	switch v := e.val.(type) {
	case *ast.ListType:
		return "a list"
	case *ast.LiteralType:
		switch v.Token.Type {
		case token.BOOL:
			return "bool " + v.Token.Text
		case token.NUMBER, token.FLOAT:
			return "number " + v.Token.Text
		case token.STRING, token.HEREDOC:
			s, _ := tokenString(v.Token)
			return "string " + strconv.Quote(s)
		}
		return v.Token.Type.String()
	}
	return fmt.Sprintf("%T", e.val)
}

func literal(e *entry) (*ast.LiteralType, bool) {
	if e.obj {
		return nil, false
	}
	lit, ok := e.val.(*ast.LiteralType)
	return lit, ok
}

// str reads a string. Like HCL's decoder, a bare number is accepted as its text.
func (b *block) str(key string, dst *string) bool {
	e := b.take(key)
	if e == nil {
		return false
	}
	lit, ok := literal(e)
	if ok {
		switch lit.Token.Type {
		case token.STRING, token.HEREDOC:
			if s, ok := tokenString(lit.Token); ok {
				*dst = s
				return true
			}
		case token.NUMBER:
			*dst = lit.Token.Text
			return true
		}
	}
	b.typeErr(e, "a string")
	return false
}

// integer reads an integer. Like HCL's decoder, a quoted integer ("8081") is
// accepted: SPIRE's documented examples write ports that way.
func (b *block) integer(key string, dst *int64) bool {
	e := b.take(key)
	if e == nil {
		return false
	}
	lit, ok := literal(e)
	if ok {
		text := ""
		switch lit.Token.Type {
		case token.NUMBER:
			text = lit.Token.Text
		case token.STRING:
			text, _ = tokenString(lit.Token)
		}
		if text != "" {
			if v, err := strconv.ParseInt(strings.TrimSpace(text), 0, 64); err == nil {
				*dst = v
				return true
			}
		}
	}
	b.typeErr(e, "an integer")
	return false
}

// port reads a TCP port number (0..65535).
func (b *block) port(key string, dst *int) bool {
	var v int64
	if !b.integer(key, &v) {
		return false
	}
	if v < 0 || v > 65535 {
		b.d.errorf(b.kids[key].pos, "invalid value for %q in %s: port %d out of range 0..65535", key, b.desc, v)
		return false
	}
	*dst = int(v)
	return true
}

func (b *block) boolean(key string, dst *bool) bool {
	e := b.take(key)
	if e == nil {
		return false
	}
	if lit, ok := literal(e); ok && lit.Token.Type == token.BOOL {
		*dst = lit.Token.Text == "true"
		return true
	}
	b.typeErr(e, "a bool (true or false)")
	return false
}

// duration reads a Go duration string such as "24h" or "90s", as SPIRE does.
func (b *block) duration(key string, dst *time.Duration) bool {
	var s string
	if !b.str(key, &s) {
		return false
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		b.d.errorf(b.kids[key].pos, "invalid value for %q in %s: %q is not a duration such as \"90s\" or \"24h\"", key, b.desc, s)
		return false
	}
	*dst = v
	return true
}

// strings reads a list of strings.
func (b *block) strings(key string, dst *[]string) bool {
	e := b.take(key)
	if e == nil {
		return false
	}
	list, ok := e.val.(*ast.ListType)
	if !ok || e.obj {
		b.typeErr(e, "a list of strings")
		return false
	}
	out := make([]string, 0, len(list.List))
	for _, n := range list.List {
		lit, ok := n.(*ast.LiteralType)
		if !ok || (lit.Token.Type != token.STRING && lit.Token.Type != token.HEREDOC) {
			b.typeErr(e, "a list of strings")
			return false
		}
		s, ok := tokenString(lit.Token)
		if !ok {
			b.typeErr(e, "a list of strings")
			return false
		}
		out = append(out, s)
	}
	*dst = out
	return true
}

// ints reads a list of integers (numbers, or strings holding one).
func (b *block) ints(key string, dst *[]int64) bool {
	e := b.take(key)
	if e == nil {
		return false
	}
	list, ok := e.val.(*ast.ListType)
	if !ok || e.obj {
		b.typeErr(e, "a list of integers")
		return false
	}
	out := make([]int64, 0, len(list.List))
	for _, n := range list.List {
		lit, ok := n.(*ast.LiteralType)
		text := ""
		if ok {
			switch lit.Token.Type {
			case token.NUMBER:
				text = lit.Token.Text
			case token.STRING:
				text, _ = tokenString(lit.Token)
			}
		}
		v, err := strconv.ParseInt(strings.TrimSpace(text), 0, 64)
		if text == "" || err != nil {
			b.typeErr(e, "a list of integers")
			return false
		}
		out = append(out, v)
	}
	*dst = out
	return true
}

// sub returns the nested block key, or nil when absent or not a block.
func (b *block) sub(key, desc string) *block {
	e := b.take(key)
	if e == nil {
		return nil
	}
	if !e.obj {
		b.typeErr(e, "a block")
		return nil
	}
	return b.d.newBlock(desc, e.kids)
}

// plugins reads the plugins section: it rejects external plugins, skips
// disabled ones (as SPIRE does) and rejects a plugin declared twice. The
// binary's catalog checks types and names, each plugin its plugin_data.
func (d *decoder) plugins(root *block) []Plugin {
	e := root.take("plugins")
	if e == nil {
		return nil
	}
	if !e.obj {
		root.typeErr(e, "a block")
		return nil
	}
	var out []Plugin
	seen := map[string]token.Pos{}
	for _, te := range e.kids {
		if !te.obj {
			d.errorf(te.pos, "invalid plugin %q in plugins block: expected %s \"<name>\" { ... }", te.name, te.name)
			continue
		}
		for _, ne := range te.kids {
			desc := fmt.Sprintf("plugin %s %q", te.name, ne.name)
			if !ne.obj {
				d.errorf(ne.pos, "invalid %s: expected a block, got %s", desc, describe(ne))
				continue
			}
			id := te.name + "\x00" + ne.name
			if p, dup := seen[id]; dup {
				d.errorf(ne.pos, "%s is declared twice (first on line %d)", desc, p.Line)
				continue
			}
			seen[id] = ne.pos
			pb := d.newBlock(desc, ne.kids)
			enabled := true
			pb.boolean("enabled", &enabled)
			for _, k := range []string{"plugin_cmd", "plugin_args", "plugin_checksum"} {
				if x := pb.take(k); x != nil {
					d.errorf(x.pos, "%s sets %q: external plugins are not supported, Sigil has only built-in plugins", desc, k)
				}
			}
			if x := pb.take("plugin_data_file"); x != nil {
				d.errorf(x.pos, "%s sets %q, which Sigil does not support: write the settings in plugin_data", desc, "plugin_data_file")
			}
			plugin := Plugin{Type: te.name, Name: ne.name, Pos: Pos{File: d.file, Line: ne.pos.Line}, dataPos: ne.pos}
			if de := pb.kids["plugin_data"]; de != nil && de.obj {
				plugin.data, plugin.dataPos = de.kids, de.pos
			}
			pb.sub("plugin_data", "plugin_data of "+desc) // a block, if present
			if !enabled {
				continue // disabled: skipped entirely, as SPIRE does
			}
			pb.done()
			out = append(out, plugin)
		}
	}
	return out
}

// readConfigFile reads path with SPIRE's friendly message for a missing file,
// expanding $VAR / ${VAR} from the environment when expandEnv is set ("$$"
// stands for a literal "$"), like SPIRE's -expandEnv.
func readConfigFile(path string, expandEnv bool) ([]byte, error) {
	src, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("could not find config file %s: please use the -config flag", path)
	}
	if err != nil {
		return nil, fmt.Errorf("unable to read configuration at %q: %w", path, err)
	}
	if expandEnv {
		src = []byte(os.Expand(string(src), func(k string) string {
			if k == "$" {
				return "$"
			}
			return os.Getenv(k)
		}))
	}
	return src, nil
}
