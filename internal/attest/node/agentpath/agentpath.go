// Package agentpath renders agent_path_template, the option of SPIRE's node
// attestors (x509pop, k8s_psat, ...) that shapes the path of an agent's
// SPIFFE ID from what the attestor verified: a Go text/template with the
// functions SPIRE makes available (a set of the sprig library's), where a
// missing key is an error rather than "<no value>".
//
// It is a package of its own because the sprig functions cost the binary
// that links them about 650 KiB: only sigil-server imports it (through its
// plugin catalog), never the attestor packages that sigil-agent also links.
package agentpath

import (
	"bytes"
	"fmt"
	"text/template"

	sprig "github.com/Masterminds/sprig/v3"
)

// funcNames are the sprig functions an agent path template may call, the
// same set as SPIRE's (templates written for SPIRE render the same path).
var funcNames = []string{
	// strings
	"abbrev", "abbrevboth", "trunc", "trim", "upper", "lower", "title", "untitle", "substr", "repeat",
	"trimAll", "trimSuffix", "trimPrefix", "nospace", "initials", "swapcase", "snakecase", "camelcase",
	"kebabcase", "wrap", "wrapWith", "contains", "hasPrefix", "hasSuffix", "quote", "squote", "cat",
	"indent", "nindent", "replace", "plural", "toString", "splitList", "toStrings", "join", "sortAlpha",
	// hashes and encodings
	"sha1sum", "sha256sum", "adler32sum", "b64enc", "b64dec", "b32enc", "b32dec",
	// defaults, logic, lists, dictionaries
	"seq", "default", "empty", "coalesce", "all", "any", "compact", "mustCompact", "ternary",
	"tuple", "list", "dict", "get", "set", "unset", "hasKey", "pluck", "keys", "pick", "omit",
	"merge", "mergeOverwrite", "mustMerge", "mustMergeOverwrite", "values",
	"append", "push", "mustAppend", "mustPush", "prepend", "mustPrepend", "first", "mustFirst",
	"rest", "mustRest", "last", "mustLast", "initial", "mustInitial", "reverse", "mustReverse",
	"uniq", "mustUniq", "without", "mustWithout", "has", "mustHas", "slice", "mustSlice",
	"concat", "dig", "chunk", "mustChunk", "uuidv4", "fail",
	// paths, regular expressions, URLs
	"base", "dir", "clean", "ext", "isAbs",
	"regexMatch", "mustRegexMatch", "regexFindAll", "mustRegexFindAll", "regexFind", "mustRegexFind",
	"regexReplaceAll", "mustRegexReplaceAll", "regexReplaceAllLiteral", "mustRegexReplaceAllLiteral",
	"regexSplit", "mustRegexSplit", "regexQuoteMeta", "urlParse", "urlJoin",
}

// funcs builds the function map from sprig's text/template functions.
func funcs() template.FuncMap {
	all := sprig.TxtFuncMap()
	m := make(template.FuncMap, len(funcNames))
	for _, name := range funcNames {
		f, ok := all[name]
		if !ok {
			panic(fmt.Sprintf("agentpath: sprig has no function %q", name)) // a programming error, caught by the tests
		}
		m[name] = f
	}
	return m
}

// Template is a parsed agent path template.
type Template struct {
	text string
	tmpl *template.Template
}

// Parse parses an agent path template.
func Parse(text string) (*Template, error) {
	t, err := template.New("agent_path_template").Option("missingkey=error").Funcs(funcs()).Parse(text)
	if err != nil {
		return nil, fmt.Errorf("agent_path_template: %w", err)
	}
	return &Template{text: text, tmpl: t}, nil
}

// Execute renders the template with data (the attestor's template data).
func (t *Template) Execute(data any) (string, error) {
	var b bytes.Buffer
	if err := t.tmpl.Execute(&b, data); err != nil {
		return "", err
	}
	return b.String(), nil
}

// String returns the template's text.
func (t *Template) String() string { return t.text }
