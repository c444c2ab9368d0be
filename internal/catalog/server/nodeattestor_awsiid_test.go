//go:build !sigil_omit_aws_iid

package server_test

import (
	"os"
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

// TestAWSIIDExampleConf: the commented NodeAttestor "aws_iid" of
// conf/server/server.conf parses when uncommented, with each of its
// optional settings.
func TestAWSIIDExampleConf(t *testing.T) {
	src, err := os.ReadFile("../../../conf/server/server.conf")
	if err != nil {
		t.Fatal(err)
	}
	p, err := parse(t, uncommentBlock(t, string(src), `    # NodeAttestor "aws_iid" {`))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(p.Names(), ", "), `NodeAttestor "aws_iid"`) {
		t.Fatalf("plugins %s", strings.Join(p.Names(), ", "))
	}
}
