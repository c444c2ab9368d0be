package cliutil

import (
	"strings"
	"testing"
)

// TestResolveSocketPath: SPIRE's order of -socketPath, -instance with the
// template variable, the path variable and the default.
func TestResolveSocketPath(t *testing.T) {
	const def = "/tmp/spire-server/private/api.sock"
	cases := []struct {
		name, socketPath, instance, tpl, path string
		want, err                             string
	}{
		{name: "default", socketPath: def, want: def},
		{name: "path variable", socketPath: def, path: "/run/a.sock", want: "/run/a.sock"},
		{name: "instance", socketPath: def, instance: "prod-1", tpl: "/run/%i/api.sock", path: "/run/a.sock", want: "/run/prod-1/api.sock"},
		{name: "every %i", socketPath: def, instance: "b", tpl: "/run/%i/%i.sock", want: "/run/b/b.sock"},
		{name: "-socketPath wins", socketPath: "/x.sock", instance: "prod-1", tpl: "/run/%i/api.sock", path: "/run/a.sock", want: "/x.sock"},
		{name: "instance without template", socketPath: def, instance: "prod-1", err: "needs the " + ServerSocketTemplateEnv},
		{name: "template without %i", socketPath: "/x.sock", instance: "prod-1", tpl: "/run/api.sock", err: "has no %i"},
		{name: "template unused without instance", socketPath: def, tpl: "/run/%i/api.sock", want: def},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv(ServerSocketTemplateEnv, c.tpl)
			t.Setenv("SPIRE_SERVER_PRIVATE_SOCKET", c.path)
			got, err := ResolveSocketPath(c.socketPath, def, ServerSocketTemplateEnv, c.instance)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("got %q, %v; want an error with %q", got, err, c.err)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("got %q, %v; want %q", got, err, c.want)
			}
		})
	}
}
