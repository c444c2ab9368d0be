package clip

import (
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestQuote(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", `""`},
		{"abc", `"abc"`},
		{"a\x00b", `"a\x00b"`},
		{strings.Repeat("a", Max), `"` + strings.Repeat("a", Max) + `"`},
		{strings.Repeat("a", Max+1), `"` + strings.Repeat("a", Max) + `"...`},
		// A multi-byte rune straddling the cut is left out whole.
		{strings.Repeat("a", Max-1) + "é" + "z", `"` + strings.Repeat("a", Max-1) + `"...`},
	} {
		if got := Quote(tc.in); got != tc.want {
			t.Errorf("Quote(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func FuzzQuote(f *testing.F) {
	f.Add("abc")
	f.Add(strings.Repeat("é", Max))
	f.Add(strings.Repeat("\xff", 3*Max))
	f.Fuzz(func(t *testing.T, s string) {
		q := Quote(s)
		// %q escapes a byte as at most \xNN or a rune as \U0010ffff (10
		// bytes for 4 input bytes): never more than 4 bytes per input byte.
		if len(q) > 4*Max+5 {
			t.Fatalf("Quote(%d bytes) is %d bytes long", len(s), len(q))
		}
		if len(s) <= Max && q != strconv.Quote(s) {
			t.Fatalf("Quote(%q) = %s: a short text must be quoted whole", s, q)
		}
		if len(s) > Max && (!strings.HasSuffix(q, `"...`) || !utf8.ValidString(q)) {
			t.Fatalf("Quote(%q) = %s", s, q)
		}
	})
}
