package render

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"text/template"
)

// funcs are the functions templates may call besides text/template's
// built-ins: spire-controller-manager has none, Sigil adds the two that
// Helm users reach for (as Helm defines them), so that a template such as
// `{{ .PodMeta.Labels.zone | default "production" }}` or
// `{{ required "zone label required" .PodMeta.Labels.zone }}` works.
var funcs = template.FuncMap{
	// default D V: V unless it is empty (nil, "", 0, false, empty
	// collection), else D.
	"default": func(d any, v ...any) any {
		if len(v) == 0 || empty(v[0]) {
			return d
		}
		return v[0]
	},
	// required MSG V: V, or the error MSG when V is empty.
	"required": func(msg string, v any) (any, error) {
		if empty(v) {
			return nil, errors.New(msg)
		}
		return v, nil
	},
}

func empty(v any) bool {
	if v == nil {
		return true
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.String, reflect.Slice, reflect.Map, reflect.Array:
		return rv.Len() == 0
	case reflect.Pointer, reflect.Interface:
		return rv.IsNil()
	case reflect.Bool:
		return !rv.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return rv.Int() == 0
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return rv.Uint() == 0
	case reflect.Float32, reflect.Float64:
		return rv.Float() == 0
	}
	return false
}

// parseTemplate parses src as a text/template named name (the field it
// comes from, which text/template puts in its errors). A missing map key
// is the zero value (so an absent label renders "" and `default` and
// `required` see it as empty), and a field chain naming a map key with
// dashes, `.PodMeta.Labels.device-id`, reads that key (text/template would
// refuse to parse it).
func parseTemplate(name, src string) (*template.Template, error) {
	t, err := template.New(name).Funcs(funcs).Option("missingkey=zero").Parse(dashedKeys(src))
	if err != nil {
		return nil, err
	}
	return t, nil
}

func isIdent(c byte) bool {
	return c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// dashedKeys rewrites, inside actions and outside quoted strings, each
// field chain with a dashed element (.A.B.key-with-dashes.C) into an index
// call ((index .A.B "key-with-dashes" "C")). Such a chain is a parse error
// for text/template (or, with a digit after the dash, a field given a
// number argument, an execution error), so no valid template changes.
func dashedKeys(src string) string {
	if !strings.Contains(src, "-") {
		return src
	}
	var b strings.Builder
	i := 0
	for i < len(src) {
		start := strings.Index(src[i:], "{{")
		if start < 0 {
			b.WriteString(src[i:])
			break
		}
		start += i
		b.WriteString(src[i : start+2])
		i = start + 2
		// Inside an action, up to its closing delimiter.
		for i < len(src) {
			c := src[i]
			switch {
			case strings.HasPrefix(src[i:], "}}"):
				b.WriteString("}}")
				i += 2
				goto next
			case strings.HasPrefix(src[i:], "/*"):
				end := strings.Index(src[i+2:], "*/")
				if end < 0 {
					b.WriteString(src[i:])
					return b.String()
				}
				b.WriteString(src[i : i+2+end+2])
				i += 2 + end + 2
			case c == '"' || c == '\'' || c == '`':
				j := i + 1
				for j < len(src) && src[j] != c {
					if src[j] == '\\' && c != '`' {
						j++
					}
					j++
				}
				if j >= len(src) {
					b.WriteString(src[i:])
					return b.String()
				}
				b.WriteString(src[i : j+1])
				i = j + 1
			case (c == '.' || c == '$') && (i == 0 || !isIdent(src[i-1]) && src[i-1] != '.' && src[i-1] != ')'):
				n, out := chain(src[i:])
				b.WriteString(out)
				i += n
			default:
				b.WriteByte(c)
				i++
			}
		}
	next:
	}
	return b.String()
}

// chain reads the field chain at the start of s ($x.a.b-c or .a.b-c) and
// returns its length and its rewrite.
func chain(s string) (int, string) {
	j := 0
	base := ""
	if s[0] == '$' {
		j = 1
		for j < len(s) && isIdent(s[j]) {
			j++
		}
		base = s[:j]
	}
	var elems []string
	dashed := -1
	for j < len(s) && s[j] == '.' {
		k := j + 1
		for k < len(s) && isIdent(s[k]) {
			k++
		}
		if k == j+1 {
			break
		}
		for k+1 < len(s) && s[k] == '-' && isIdent(s[k+1]) {
			k++
			for k < len(s) && isIdent(s[k]) {
				k++
			}
			if dashed < 0 {
				dashed = len(elems)
			}
		}
		elems = append(elems, s[j+1:k])
		j = k
	}
	if dashed < 0 {
		if j == 0 { // a lone "." (dot) or "$"
			return 1, s[:1]
		}
		return j, s[:j]
	}
	head := base
	for _, e := range elems[:dashed] {
		head += "." + e
	}
	if head == "" {
		head = "."
	}
	keys := make([]string, 0, len(elems)-dashed)
	for _, e := range elems[dashed:] {
		keys = append(keys, fmt.Sprintf("%q", e))
	}
	return j, "(index " + head + " " + strings.Join(keys, " ") + ")"
}
