package peercred

import "testing"

func TestParseStartTime(t *testing.T) {
	rest := " S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 20 21"
	for _, comm := range []string{"(sleep)", "(a b) (c))", "()", "(x) S 1)"} {
		got, err := parseStartTime("42 " + comm + rest)
		if err != nil || got != 987654 {
			t.Errorf("comm %q: got %d, %v", comm, got, err)
		}
	}
	for _, bad := range []string{"", "42 sleep S 1", "42 (sleep) S 1 2", "42 (x)" + " S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 -5"} {
		if _, err := parseStartTime(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
