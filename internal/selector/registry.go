package selector

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/sigil-spiffe/sigil/internal/clip"
)

// Kind is what Sigil knows about one selector type: which attestor
// produces it and, for a built-in attestor, which values it can produce.
// The package of each attestor declares its Kind next to the code that
// produces the selectors.
type Kind struct {
	// Type is the selector type, e.g. "unix".
	Type string
	// Producer names what produces the selectors, e.g. `WorkloadAttestor
	// "unix"`, for messages.
	Producer string
	// Check returns why value can never be produced, or nil. A nil Check
	// accepts any value (types Sigil does not implement yet).
	Check func(value string) error
}

// ErrUnknownType is wrapped by Registry.Check for a type no Kind describes.
var ErrUnknownType = errors.New("unknown selector type")

// Registry holds the selector Kinds a binary knows.
type Registry struct {
	kinds map[string]Kind
}

// NewRegistry returns a registry of kinds; a type may be registered once.
func NewRegistry(kinds ...Kind) (*Registry, error) {
	r := &Registry{kinds: make(map[string]Kind, len(kinds))}
	for _, k := range kinds {
		if k.Type == "" || strings.Contains(k.Type, ":") {
			return nil, fmt.Errorf("selector registry: invalid type %q", k.Type)
		}
		if prev, dup := r.kinds[k.Type]; dup {
			return nil, fmt.Errorf("selector registry: type %q registered by %s and %s", k.Type, prev.Producer, k.Producer)
		}
		r.kinds[k.Type] = k
	}
	return r, nil
}

// Lookup returns the Kind of type typ.
func (r *Registry) Lookup(typ string) (Kind, bool) {
	k, ok := r.kinds[typ]
	return k, ok
}

// Types returns the registered types, sorted.
func (r *Registry) Types() []string {
	out := make([]string, 0, len(r.kinds))
	for t := range r.kinds {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// Check reports whether sel can ever be produced: nil when it can (or its
// Kind does not restrict values); an error wrapping ErrUnknownType when no
// Kind has its type; otherwise why the Kind's attestor never produces it.
func (r *Registry) Check(sel Selector) error {
	if err := sel.Validate(); err != nil {
		return err
	}
	k, ok := r.kinds[sel.Type]
	if !ok {
		return fmt.Errorf("%w %s (known types: %s)", ErrUnknownType, clip.Quote(sel.Type), strings.Join(r.Types(), ", "))
	}
	if k.Check == nil {
		return nil
	}
	if err := k.Check(sel.Value); err != nil {
		return fmt.Errorf("%s never produces %s: %w", k.Producer, clip.Quote(sel.String()), err)
	}
	return nil
}

// CheckKeyed is a Kind.Check for values of the form "key:rest": it looks up
// key in keys (each key's check validates rest; nil accepts any non-empty
// rest) and names the valid keys when key is not one of them.
func CheckKeyed(value string, keys map[string]func(string) error) error {
	key, rest, ok := strings.Cut(value, ":")
	check, known := keys[key]
	if !ok || !known {
		names := make([]string, 0, len(keys))
		for k := range keys {
			names = append(names, k+":")
		}
		sort.Strings(names)
		return fmt.Errorf("the value must start with one of %s", strings.Join(names, ", "))
	}
	if rest == "" {
		return fmt.Errorf("%s: needs a value after \"%s:\"", key, key)
	}
	if check == nil {
		return nil
	}
	if err := check(rest); err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	return nil
}
