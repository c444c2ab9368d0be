package clip

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestCut(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"", 4, ""},
		{"abcd", 4, "abcd"},
		{"abcde", 4, "abcd..."},
		{"abc€", 4, "abc..."}, // the euro sign straddles the cut
		{"ab\xffcd", 4, "ab\uFFFDc..."},
		{"abc", -1, "..."},
	} {
		if got := Cut(tc.in, tc.n); got != tc.want {
			t.Errorf("Cut(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}

func FuzzCut(f *testing.F) {
	f.Add("abc€", 4)
	f.Add(strings.Repeat("\xff", 600), 512)
	f.Fuzz(func(t *testing.T, s string, n int) {
		n %= 1024
		got := Cut(s, n)
		if !utf8.ValidString(got) {
			t.Fatalf("Cut(%q, %d) = %q: invalid UTF-8", s, n, got)
		}
		kept := strings.TrimSuffix(got, "...")
		if len(s) > max(n, 0) && (kept == got || len(strings.ToValidUTF8(s[:min(len(s), max(n, 0))], "\uFFFD")) < len(kept)) {
			t.Fatalf("Cut(%q, %d) = %q", s, n, got)
		}
	})
}
