package sqlstore

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// whereBuilder accumulates AND-ed conditions and their arguments.
type whereBuilder struct {
	conds []string
	args  []any
	// none is set by a condition no stored row can meet (text that is not
	// storable); the query then matches nothing and binds no argument.
	none bool
}

func (w *whereBuilder) add(cond string, args ...any) {
	for _, a := range args {
		if s, ok := a.(string); ok && !isText(s) {
			w.none = true
		}
	}
	w.conds = append(w.conds, cond)
	w.args = append(w.args, args...)
}

// sql returns " WHERE a AND b" (or "").
func (w *whereBuilder) sql() string {
	if w.none {
		return " WHERE 1 = 0"
	}
	if len(w.conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(w.conds, " AND ")
}

// params returns the arguments of sql() followed by extra (those of what
// follows the WHERE clause).
func (w *whereBuilder) params(extra ...any) []any {
	if w.none {
		return extra
	}
	return append(append([]any(nil), w.args...), extra...)
}

// setFilter describes a match between a parent row's child set (selectors of
// an entry or node, trust domains of an entry) and a given set.
type setFilter struct {
	table     string // child table
	fk        string // child column referencing the parent key
	parentKey string // qualified parent key column, e.g. "e.id"
	member    string // condition true when a child row is one given item
	args      []any  // arguments of member
	n         int    // number of distinct given items
	// dropped counts given items that are not storable text: no child row
	// equals them (they are left out of member).
	dropped int
}

// selectorSet builds a setFilter over (type, value) child rows.
func selectorSet(table, fk, parentKey string, sels []selector.Selector) setFilter {
	sels = selector.Dedupe(sels)
	n := len(sels)
	sels = slices.DeleteFunc(sels, func(s selector.Selector) bool { return !isText(s.Type) || !isText(s.Value) })
	dropped := n - len(sels)
	parts := make([]string, len(sels))
	args := make([]any, 0, 2*len(sels))
	for i, s := range sels {
		parts[i] = "(type = ? AND value = ?)"
		args = append(args, s.Type, s.Value)
	}
	return setFilter{table: table, fk: fk, parentKey: parentKey,
		member: "(" + strings.Join(parts, " OR ") + ")", args: args, n: len(sels), dropped: dropped}
}

// stringSet builds a setFilter over a single text column.
func stringSet(table, fk, parentKey, col string, vals []string) setFilter {
	vals = dedupeStrings(vals)
	n := len(vals)
	vals = slices.DeleteFunc(vals, func(v string) bool { return !isText(v) })
	dropped := n - len(vals)
	args := make([]any, len(vals))
	for i, v := range vals {
		args[i] = v
	}
	return setFilter{table: table, fk: fk, parentKey: parentKey,
		member: col + " IN (" + placeholders(len(vals)) + ")", args: args, n: len(vals), dropped: dropped}
}

// apply adds the condition for the match mode. Every mode requires the
// parent to have at least one child in the given set (a parent with an
// empty set matches no set filter):
//
//	Exact:    children == given
//	Subset:   children ⊆ given
//	Superset: children ⊇ given
//	Any:      children ∩ given ≠ ∅
//
// Child rows are unique per parent (primary key), so COUNT(*) counts
// distinct matches.
func (f setFilter) apply(w *whereBuilder, mode datastore.SelectorMatch) error {
	switch {
	case mode < datastore.MatchExact || mode > datastore.MatchAny:
		return fmt.Errorf("unknown match mode %d", mode)
	case f.n == 0, f.dropped > 0 && (mode == datastore.MatchExact || mode == datastore.MatchSuperset):
		// Nothing left to match, or an item no child can be.
		w.none = true
		return nil
	}
	anyMatch := fmt.Sprintf("%s IN (SELECT %s FROM %s WHERE %s)", f.parentKey, f.fk, f.table, f.member)
	allGiven := fmt.Sprintf("%s IN (SELECT %s FROM %s WHERE %s GROUP BY %s HAVING COUNT(*) = ?)",
		f.parentKey, f.fk, f.table, f.member, f.fk)
	noOther := fmt.Sprintf("NOT EXISTS (SELECT 1 FROM %s c WHERE c.%s = %s AND NOT %s)",
		f.table, f.fk, f.parentKey, f.member)
	withN := append(append([]any(nil), f.args...), f.n)
	switch mode {
	case datastore.MatchAny:
		w.add(anyMatch, f.args...)
	case datastore.MatchSuperset:
		w.add(allGiven, withN...)
	case datastore.MatchSubset:
		w.add(anyMatch, f.args...)
		w.add(noOther, f.args...)
	case datastore.MatchExact:
		w.add(allGiven, withN...)
		w.add(noOther, f.args...)
	default:
		return fmt.Errorf("unknown match mode %d", mode)
	}
	return nil
}

func dedupeStrings(in []string) []string {
	out := append([]string(nil), in...)
	sort.Strings(out)
	n := 0
	for i, v := range out {
		if i > 0 && v == out[n-1] {
			continue
		}
		out[n] = v
		n++
	}
	return out[:n]
}
