package server_test

import (
	"slices"
	"strings"
	"testing"
)

// uncommentBlock returns src with the commented plugin block that starts
// with the line header made live: one level of comment off each line, and
// a second for the optional settings ("# key = value"; comment lines stay
// comments).
func uncommentBlock(t *testing.T, src, header string) string {
	t.Helper()
	lines := strings.Split(src, "\n")
	start := slices.Index(lines, header)
	if start < 0 {
		t.Fatalf("no %q in the file", header)
	}
	for i := start; ; i++ {
		l := lines[i]
		if !strings.HasPrefix(l, "    #") {
			t.Fatalf("the commented block ends without its closing brace at line %d", i+1)
		}
		l = "    " + strings.TrimPrefix(strings.TrimPrefix(l, "    #"), " ")
		if strings.HasPrefix(strings.TrimSpace(l), "# ") && strings.Contains(l, " = ") {
			l = strings.Replace(l, "# ", "", 1)
		}
		lines[i] = l
		if l == "    }" {
			return strings.Join(lines, "\n")
		}
	}
}
