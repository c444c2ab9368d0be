package entrycache

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/datastore"
)

// TestEntrySetMatchesMap runs random puts (new IDs and replacements) and
// removals (present and absent IDs) on an entrySet, growing it past
// setListMax and shrinking it back, and checks it against a map after
// every step.
func TestEntrySetMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var s entrySet
	want := map[string]*datastore.Entry{}
	for step := range 20000 {
		// Drift between small and large sets.
		span := 4 + (step/1000%4)*12
		id := fmt.Sprint(rng.IntN(span))
		if rng.IntN(2) == 0 {
			e := &datastore.Entry{ID: id, RevisionNumber: int64(step)}
			s.put(e)
			want[id] = e
		} else {
			s.remove(id)
			delete(want, id)
		}
		got := map[string]*datastore.Entry{}
		for e := range s.all() {
			if _, dup := got[e.ID]; dup {
				t.Fatalf("step %d: %s yielded twice", step, e.ID)
			}
			got[e.ID] = e
		}
		if !maps.Equal(got, want) || s.len() != len(want) {
			t.Fatalf("step %d: set holds %v (len %d), want %v", step, got, s.len(), want)
		}
		if a := s.any(); (a == nil) != (len(want) == 0) || a != nil && want[a.ID] != a {
			t.Fatalf("step %d: any() = %v", step, a)
		}
		if len(want) > setListMax && s.big == nil {
			t.Fatalf("step %d: %d entries in a list", step, len(want))
		}
	}
}

// TestIndexDropsEmptySets checks that delIdx removes a key whose set
// became empty (and ignores a missing key).
func TestIndexDropsEmptySets(t *testing.T) {
	m := map[string]entrySet{}
	addIdx(m, "p", &datastore.Entry{ID: "a"})
	addIdx(m, "p", &datastore.Entry{ID: "b"})
	delIdx(m, "p", "a")
	delIdx(m, "q", "a")
	if s, ok := m["p"]; !ok || s.len() != 1 || s.any().ID != "b" {
		t.Fatalf("after removing a: %+v", m)
	}
	delIdx(m, "p", "b")
	if len(m) != 0 {
		t.Fatalf("empty set kept: %+v", m)
	}
}
