package k8s

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// SelectorKinds describe the selectors Attest produces, so that one it can
// never produce (k8s:namespace:x, k8s:pod-label:nocolon,
// k8s:pod-image-count:two) is refused when an entry is written.
func SelectorKinds() []selector.Kind {
	keys := map[string]func(string) error{
		"ns":                   nil,
		"sa":                   nil,
		"node-name":            nil,
		"pod-name":             nil,
		"pod-uid":              nil,
		"pod-label":            checkPair("pod-label:app:web"),
		"pod-owner":            checkPair("pod-owner:ReplicaSet:web-5d4f8"),
		"pod-owner-uid":        checkPair("pod-owner-uid:ReplicaSet:<uid>"),
		"pod-image":            nil,
		"pod-init-image":       nil,
		"pod-image-count":      checkCount,
		"pod-init-image-count": checkCount,
		"container-name":       nil,
		"container-image":      nil,
	}
	return []selector.Kind{{
		Type:     Type,
		Producer: `WorkloadAttestor "k8s"`,
		Check:    func(v string) error { return selector.CheckKeyed(v, keys) },
	}}
}

// checkPair accepts "<key>:<value>" with a non-empty key.
func checkPair(example string) func(string) error {
	return func(s string) error {
		if k, _, ok := strings.Cut(s, ":"); !ok || k == "" {
			return fmt.Errorf("%s is not <key>:<value> (e.g. %s)", clip.Quote(s), example)
		}
		return nil
	}
}

// checkCount accepts a decimal count.
func checkCount(s string) error {
	if n, err := strconv.ParseUint(s, 10, 16); err != nil || strconv.FormatUint(n, 10) != s {
		return fmt.Errorf("%s is not a number of containers", clip.Quote(s))
	}
	return nil
}
