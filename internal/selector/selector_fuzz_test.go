package selector

import (
	"slices"
	"strings"
	"testing"
)

// maxErrLen bounds an error message about one selector, whatever its size:
// messages quote at most a short prefix of the input.
const maxErrLen = 1024

// FuzzParse checks Parse on any text: it never panics, an accepted selector
// validates and round-trips (Parse(String()) gives it back, String() is the
// input), and an error stays short however long the input is.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"unix:uid:1000",
		"unix:gid:0",
		"unix:path:/usr/bin/curl",
		"k8s:ns:default",
		"k8s:pod-label:app:web",
		"spiffe_id:spiffe://example.org/a",
		"x509pop:subject:cn:node-1",
		"join_token:ab12cd",
		"docker:label:com.example.name:frontend",
		"a:b",
		"unix",
		":uid:0",
		"unix:",
		":",
		"",
		"unix:uid\x00:0",
		"uni\x7fx:uid:0",
		"unix:\xff\xfe",
		"unix:ünïcödé",
		"unix:" + strings.Repeat("a", MaxLen-5),
		"unix:" + strings.Repeat("a", MaxLen),
		strings.Repeat("t", 4096),
		strings.Repeat("t", 4096) + ":v",
		strings.Repeat("\x01", 2048) + ":v",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := Parse(s)
		if err != nil {
			if len(err.Error()) > maxErrLen {
				t.Fatalf("Parse(%d bytes): error of %d bytes (max %d): %.200q...", len(s), len(err.Error()), maxErrLen, err)
			}
			if sel != (Selector{}) {
				t.Fatalf("Parse(%q) failed but returned %#v", s, sel)
			}
			return
		}
		if err := sel.Validate(); err != nil {
			t.Fatalf("Parse(%q) = %#v, which does not validate: %v", s, sel, err)
		}
		if sel.String() != s {
			t.Fatalf("Parse(%q).String() = %q", s, sel.String())
		}
		again, err := Parse(sel.String())
		if err != nil || again != sel {
			t.Fatalf("Parse(Parse(%q).String()) = %#v, %v; want %#v", s, again, err, sel)
		}
		if len(s) > MaxLen || strings.Contains(sel.Type, ":") || sel.Type == "" || sel.Value == "" {
			t.Fatalf("Parse(%q) accepted %#v", s, sel)
		}
	})
}

// FuzzDedupe checks Dedupe and Set on selectors parsed from any text (one
// selector per line): the result is sorted, free of duplicates, holds
// exactly the input's selectors, and the input is left untouched.
func FuzzDedupe(f *testing.F) {
	f.Add("unix:uid:0\nunix:uid:0\nunix:gid:0")
	f.Add("b:1\na:2\na:1\nb:1")
	f.Add("k8s:ns:a\nk8s:ns:a:b\nk8s:ns")
	f.Add("")
	f.Fuzz(func(t *testing.T, text string) {
		var in []Selector
		for line := range strings.SplitSeq(text, "\n") {
			if sel, err := Parse(line); err == nil {
				in = append(in, sel)
			}
		}
		orig := slices.Clone(in)
		out := Dedupe(in)
		if !slices.Equal(in, orig) {
			t.Fatalf("Dedupe changed its input: %v -> %v", orig, in)
		}
		for i := 1; i < len(out); i++ {
			if !Less(out[i-1], out[i]) {
				t.Fatalf("Dedupe(%v) = %v: not strictly increasing at %d", in, out, i)
			}
		}
		set := NewSet(in...)
		if len(set) != len(out) {
			t.Fatalf("Dedupe(%v) = %v, but the input has %d distinct selectors", in, out, len(set))
		}
		for _, s := range out {
			if !set.Has(s) {
				t.Fatalf("Dedupe(%v) = %v invented %v", in, out, s)
			}
		}
		if len(in) > 0 {
			if !set.ContainsAll(in) || !set.ContainsAll(out) || !set.ContainsAny(in) {
				t.Fatalf("set of %v does not contain its own selectors", in)
			}
		} else if set.ContainsAll(in) {
			t.Fatal("an empty selector list must match nothing")
		}
	})
}
