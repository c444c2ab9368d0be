package systemd

import (
	"errors"
	"fmt"
	"strings"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// SelectorKinds describe the selectors Attest produces, so that one it can
// never produce (systemd:unit:web.service, systemd:id:) is refused when an
// entry is written.
func SelectorKinds() []selector.Kind {
	return []selector.Kind{{
		Type:     Type,
		Producer: `WorkloadAttestor "systemd"`,
		Check:    checkSelector,
	}}
}

func checkSelector(v string) error {
	key, rest, ok := strings.Cut(v, ":")
	switch {
	case ok && key == "id":
		if rest == "" || strings.ContainsAny(rest, "/\n") {
			return fmt.Errorf("id: %s is not a unit name (e.g. id:nginx.service)", clip.Quote(rest))
		}
		return nil
	case ok && key == "fragment_path":
		// Empty for a unit without a unit file (a scope, a transient
		// unit), as SPIRE.
		if rest != "" && !strings.HasPrefix(rest, "/") {
			return fmt.Errorf("fragment_path: %s is not an absolute path (e.g. fragment_path:/lib/systemd/system/nginx.service)", clip.Quote(rest))
		}
		return nil
	}
	return errors.New("the value must start with id: or fragment_path: (e.g. id:nginx.service)")
}
