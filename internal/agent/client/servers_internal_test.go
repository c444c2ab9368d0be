package client

import (
	"context"
	"errors"
	"slices"
	"testing"
)

// TestServersResolveOrder: every configured entry is resolved, names to
// all their addresses; the order starts at the agent's place (offset) and
// wraps around, and an entry's addresses are rotated the same way whatever
// order the resolver returns them in; unresolvable names are left out.
func TestServersResolveOrder(t *testing.T) {
	dns := map[string][]string{
		"multi.test": {"10.0.0.3", "10.0.0.1", "10.0.0.2"},
	}
	lookup := func(_ context.Context, host string) ([]string, error) {
		if ips, ok := dns[host]; ok {
			// Resolvers shuffle: the rotation must not depend on it.
			slices.Reverse(ips)
			return slices.Clone(ips), nil
		}
		return nil, errors.New("no such host")
	}
	s, err := NewServers([]string{"192.0.2.1:8081", "multi.test:8081", "gone.test:8081", "[2001:db8::1]:9443"})
	if err != nil {
		t.Fatal(err)
	}
	s.lookup = lookup
	cases := []struct {
		offset int
		want   []string
	}{
		{0, []string{"192.0.2.1:8081", "10.0.0.1:8081", "10.0.0.2:8081", "10.0.0.3:8081", "[2001:db8::1]:9443"}},
		{1, []string{"10.0.0.1:8081", "10.0.0.2:8081", "10.0.0.3:8081", "[2001:db8::1]:9443", "192.0.2.1:8081"}},
		{5, []string{"10.0.0.2:8081", "10.0.0.3:8081", "10.0.0.1:8081", "[2001:db8::1]:9443", "192.0.2.1:8081"}},
		{3, []string{"[2001:db8::1]:9443", "192.0.2.1:8081", "10.0.0.1:8081", "10.0.0.2:8081", "10.0.0.3:8081"}},
	}
	for _, c := range cases {
		s.offset = c.offset
		for range 2 {
			got, err := s.resolve(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, c.want) {
				t.Errorf("offset %d: %q, want %q", c.offset, got, c.want)
			}
		}
	}

	s, err = NewServers([]string{"gone.test:8081"})
	if err != nil {
		t.Fatal(err)
	}
	s.lookup = lookup
	if _, err := s.resolve(context.Background()); err == nil {
		t.Error("no resolvable server: no error")
	}
}

func TestNewServersInvalid(t *testing.T) {
	for _, in := range [][]string{nil, {"10.0.0.1"}, {":8081"}, {"10.0.0.1:8081", "x"}} {
		if _, err := NewServers(in); err == nil {
			t.Errorf("NewServers(%q): no error", in)
		}
	}
}
