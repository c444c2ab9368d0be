package entrycache

import (
	"iter"

	"github.com/sigil-spiffe/sigil/internal/datastore"
)

// setListMax is the size above which an entrySet is a map.
const setListMax = 16

// entrySet is a set of entries keyed by entry ID: the value type of the
// cache's indexes (by parent, by SPIFFE ID, node aliases by selector).
// Most sets are small (a SPIFFE ID names one entry, an agent parents a
// few): a slice, searched linearly; a set grown past setListMax becomes a
// map, and a slice again once it shrinks to half that. A map per set cost
// about 350 bytes per entry with a million entries.
type entrySet struct {
	list []*datastore.Entry
	big  map[string]*datastore.Entry
}

// put adds e, replacing the entry with its ID if there is one.
func (s *entrySet) put(e *datastore.Entry) {
	if s.big != nil {
		s.big[e.ID] = e
		return
	}
	for i, x := range s.list {
		if x.ID == e.ID {
			s.list[i] = e
			return
		}
	}
	if len(s.list) < setListMax {
		s.list = append(s.list, e)
		return
	}
	s.big = make(map[string]*datastore.Entry, 2*setListMax)
	for _, x := range s.list {
		s.big[x.ID] = x
	}
	s.big[e.ID] = e
	s.list = nil
}

// remove removes the entry with ID id, if there is one.
func (s *entrySet) remove(id string) {
	if s.big != nil {
		delete(s.big, id)
		if len(s.big) <= setListMax/2 {
			s.list = make([]*datastore.Entry, 0, len(s.big))
			for _, x := range s.big {
				s.list = append(s.list, x)
			}
			s.big = nil
		}
		return
	}
	for i, x := range s.list {
		if x.ID == id {
			last := len(s.list) - 1
			s.list[i] = s.list[last]
			s.list[last] = nil
			s.list = s.list[:last]
			return
		}
	}
}

// len is the number of entries.
func (s *entrySet) len() int {
	if s.big != nil {
		return len(s.big)
	}
	return len(s.list)
}

// any returns one of the entries (nil when empty).
func (s *entrySet) any() *datastore.Entry {
	for _, e := range s.big {
		return e
	}
	if len(s.list) > 0 {
		return s.list[0]
	}
	return nil
}

// all yields the entries, in no particular order.
func (s entrySet) all() iter.Seq[*datastore.Entry] {
	return func(yield func(*datastore.Entry) bool) {
		if s.big != nil {
			for _, e := range s.big {
				if !yield(e) {
					return
				}
			}
			return
		}
		for _, e := range s.list {
			if !yield(e) {
				return
			}
		}
	}
}

// addIdx puts e into m's set for k.
func addIdx[K comparable](m map[K]entrySet, k K, e *datastore.Entry) {
	s := m[k]
	s.put(e)
	m[k] = s
}

// delIdx removes the entry with ID id from m's set for k, and the set when
// it is empty.
func delIdx[K comparable](m map[K]entrySet, k K, id string) {
	s, ok := m[k]
	if !ok {
		return
	}
	s.remove(id)
	if s.len() == 0 {
		delete(m, k)
		return
	}
	m[k] = s
}
