package unix

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// SelectorKind describes the selectors Attest produces, so that a value
// this attestor can never produce (unix:uidd:5, unix:uid:abc) is refused
// when an entry is written rather than silently never matching.
func SelectorKind() selector.Kind {
	keys := map[string]func(string) error{
		"uid":                 checkID,
		"gid":                 checkID,
		"supplementary_gid":   checkID,
		"user":                checkName,
		"group":               checkName,
		"supplementary_group": checkName,
		"path":                checkPath,
		"sha256":              checkSHA256,
	}
	return selector.Kind{
		Type:     Type,
		Producer: `WorkloadAttestor "unix"`,
		Check:    func(v string) error { return selector.CheckKeyed(v, keys) },
	}
}

// checkID accepts what formatID writes: a decimal uint32, no sign, no
// leading zero.
func checkID(s string) error {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || formatID(uint32(n)) != s {
		return fmt.Errorf("%s is not a numeric id (0 to 4294967295, decimal)", clip.Quote(s))
	}
	return nil
}

// checkName accepts a user or group name as /etc/passwd and /etc/group can
// hold one: no colon, no newline, no surrounding space.
func checkName(s string) error {
	if strings.ContainsAny(s, ":\n") || strings.TrimSpace(s) != s {
		return fmt.Errorf("%s is not a user or group name", clip.Quote(s))
	}
	return nil
}

// checkPath accepts the absolute, clean path readlink /proc/<pid>/exe
// gives.
func checkPath(s string) error {
	if !filepath.IsAbs(s) || filepath.Clean(s) != s {
		return fmt.Errorf("%s is not an absolute, clean path (e.g. /usr/bin/app)", clip.Quote(s))
	}
	return nil
}

// checkSHA256 accepts 64 lowercase hex digits, as hex.EncodeToString
// writes them.
func checkSHA256(s string) error {
	if len(s) != 64 || strings.Trim(s, "0123456789abcdef") != "" {
		return fmt.Errorf("%s is not a SHA-256 in 64 lowercase hex digits", clip.Quote(s))
	}
	return nil
}
