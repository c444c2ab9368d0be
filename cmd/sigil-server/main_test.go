package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/cli/servercli"
	"github.com/sigil-spiffe/sigil/internal/version"
)

func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// commandNames lists every command of the binary: the lead commands, the
// admin commands and their groups ("entry", "agent", ...).
func commandNames() []string {
	var names []string
	seen := map[string]bool{}
	for _, c := range append(append([]servercli.CommandInfo{}, servercli.LeadCommands...), servercli.Commands()...) {
		names = append(names, c.Name)
		if w := strings.Fields(c.Name); len(w) > 1 && !seen[w[0]] {
			seen[w[0]] = true
			names = append(names, w[0])
		}
	}
	return names
}

func TestHelpOnEveryCommand(t *testing.T) {
	names := commandNames()
	if len(names) < 20 {
		t.Fatalf("only %d commands found: %q", len(names), names)
	}
	for _, name := range append(names, "") {
		for _, h := range []string{"-h", "--help"} {
			args := append(strings.Fields(name), h)
			code, stdout, stderr := runCmd(t, args...)
			if code != 0 || !strings.Contains(stdout, "Usage") || stderr != "" {
				t.Errorf("sigil-server %s: exit %d, stdout %q, stderr %q; want the usage on stdout, nothing on stderr, exit 0",
					strings.Join(args, " "), code, stdout, stderr)
			}
		}
	}
}

func TestVersion(t *testing.T) {
	for _, arg := range []string{"version", "-version", "--version"} {
		code, stdout, stderr := runCmd(t, arg)
		if code != 0 || stdout != version.String()+"\n" || stderr != "" {
			t.Errorf("sigil-server %s: exit %d, stdout %q, stderr %q; want %q", arg, code, stdout, stderr, version.String())
		}
	}
}
