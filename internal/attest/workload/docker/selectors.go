package docker

import (
	"fmt"
	"strings"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// SelectorKinds describe the selectors Attest produces, so that one it can
// never produce (docker:labels:a:b, docker:label:nocolon) is refused when
// an entry is written.
func SelectorKinds() []selector.Kind {
	keys := map[string]func(string) error{
		"label":               checkLabel,
		"env":                 nil,
		"image_id":            nil,
		"image_config_digest": checkDigest,
	}
	return []selector.Kind{{
		Type:     Type,
		Producer: `WorkloadAttestor "docker"`,
		Check:    func(v string) error { return selector.CheckKeyed(v, keys) },
	}}
}

// checkLabel accepts "<key>:<value>" with a non-empty key (the value may
// be empty).
func checkLabel(s string) error {
	if k, _, ok := strings.Cut(s, ":"); !ok || k == "" {
		return fmt.Errorf("%s is not <key>:<value> (e.g. label:com.example.app:web)", clip.Quote(s))
	}
	return nil
}

// checkDigest accepts "<algorithm>:<lowercase hex>", an image ID such as
// sha256:9f86d0...
func checkDigest(s string) error {
	alg, hex, ok := strings.Cut(s, ":")
	if !ok || alg == "" || strings.Trim(alg, "abcdefghijklmnopqrstuvwxyz0123456789") != "" ||
		len(hex) < 32 || strings.Trim(hex, "0123456789abcdef") != "" {
		return fmt.Errorf("%s is not an image ID such as sha256:<64 hex digits>", clip.Quote(s))
	}
	return nil
}
