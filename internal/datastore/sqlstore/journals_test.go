package sqlstore

import (
	"context"
	"maps"
	"testing"
)

// TestListCAJournals: every server's journal, by name, with its latest
// data; none is an empty map.
func (x suite) TestListCAJournals(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	got, err := s.ListCAJournals(ctx)
	if err != nil || got == nil || len(got) != 0 {
		t.Fatalf("ListCAJournals on an empty store = %v, %v", got, err)
	}
	for _, j := range []struct{ name, data string }{{"ca", "1"}, {"ca-b", "2"}, {"ca", "3"}} {
		if err := s.SetCAJournal(ctx, j.name, []byte(j.data)); err != nil {
			t.Fatal(err)
		}
	}
	got, err = s.ListCAJournals(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{"ca": []byte("3"), "ca-b": []byte("2")}
	if !maps.EqualFunc(got, want, func(a, b []byte) bool { return string(a) == string(b) }) {
		t.Errorf("ListCAJournals = %q, want %q", got, want)
	}
}
