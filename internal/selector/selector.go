// Package selector holds the selector type shared by server and agent and
// the subset-matching rule that decides which registration entries apply to
// a node or a workload.
package selector

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/sigil-spiffe/sigil/internal/clip"
)

// MaxLen bounds the textual length of one selector (type:value).
const MaxLen = 1024

// Selector is one attested property, such as unix:uid:1000 (type "unix",
// value "uid:1000").
type Selector struct {
	Type  string
	Value string
}

// String renders the selector as type:value, the form the CLI accepts.
func (s Selector) String() string { return s.Type + ":" + s.Value }

// Validate checks that type and value are non-empty, type has no colon and
// neither contains control characters. Errors quote at most a short prefix
// of the type (see clip).
func (s Selector) Validate() error {
	if s.Type == "" {
		return errors.New("selector type is empty")
	}
	if strings.Contains(s.Type, ":") {
		return fmt.Errorf("selector type %s must not contain ':'", clip.Quote(s.Type))
	}
	if s.Value == "" {
		return fmt.Errorf("selector %s has an empty value", clip.Quote(s.Type))
	}
	if len(s.Type)+1+len(s.Value) > MaxLen {
		return fmt.Errorf("selector %s is longer than %d bytes", clip.Quote(s.Type), MaxLen)
	}
	for _, r := range s.Type + s.Value {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("selector %s contains a control character", clip.Quote(s.Type))
		}
	}
	return nil
}

// Parse parses "type:value" (the value may itself contain colons, as in
// unix:uid:1000).
func Parse(s string) (Selector, error) {
	t, v, ok := strings.Cut(s, ":")
	if !ok {
		return Selector{}, fmt.Errorf("selector %s must be of the form type:value", clip.Quote(s))
	}
	sel := Selector{Type: t, Value: v}
	if err := sel.Validate(); err != nil {
		return Selector{}, fmt.Errorf("invalid selector %s: %w", clip.Quote(s), err)
	}
	return sel, nil
}

// Less orders selectors by type, then value.
func Less(a, b Selector) bool {
	if a.Type != b.Type {
		return a.Type < b.Type
	}
	return a.Value < b.Value
}

// Sort sorts selectors in place by type, then value.
func Sort(sels []Selector) {
	sort.Slice(sels, func(i, j int) bool { return Less(sels[i], sels[j]) })
}

// Dedupe returns the sorted selectors with duplicates removed.
func Dedupe(sels []Selector) []Selector {
	out := append([]Selector(nil), sels...)
	Sort(out)
	n := 0
	for i, s := range out {
		if i > 0 && s == out[n-1] {
			continue
		}
		out[n] = s
		n++
	}
	return out[:n]
}

// Set is an unordered set of selectors.
type Set map[Selector]struct{}

// NewSet builds a set from the given selectors.
func NewSet(sels ...Selector) Set {
	s := make(Set, len(sels))
	for _, sel := range sels {
		s[sel] = struct{}{}
	}
	return s
}

// Has reports whether sel is in the set.
func (s Set) Has(sel Selector) bool {
	_, ok := s[sel]
	return ok
}

// ContainsAll reports whether every selector in sub is in s: the rule by
// which an entry (sub) applies to a workload or node (s). An entry with no
// selectors matches nothing.
func (s Set) ContainsAll(sub []Selector) bool {
	if len(sub) == 0 {
		return false
	}
	for _, sel := range sub {
		if !s.Has(sel) {
			return false
		}
	}
	return true
}

// ContainsAny reports whether at least one selector in sub is in s.
func (s Set) ContainsAny(sub []Selector) bool {
	for _, sel := range sub {
		if s.Has(sel) {
			return true
		}
	}
	return false
}
