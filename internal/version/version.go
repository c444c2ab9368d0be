// Package version reports the version of the running Sigil binary. Release
// builds stamp it with the linker:
//
//	go build -ldflags "-X github.com/sigil-spiffe/sigil/internal/version.Version=v1.2.3" ./cmd/sigil-agent
//
// Without a stamp it comes from the build information the Go toolchain
// records (runtime/debug.ReadBuildInfo): the module version when built as a
// dependency or from a tagged checkout, else the VCS revision ("devel+<12
// hex digits>", "-dirty" for a modified tree), else "devel".
package version

import (
	"runtime/debug"
	"strings"
)

// Version is set with -ldflags -X by release builds; empty otherwise.
var Version string

// MaxLen bounds what String returns: SPIRE's server refuses an agent_version
// longer than 255 bytes in PostStatus.
const MaxLen = 255

// String returns the binary's version, never empty.
func String() string {
	bi, _ := debug.ReadBuildInfo()
	return clip(resolve(Version, bi))
}

func resolve(stamped string, bi *debug.BuildInfo) string {
	if v := strings.TrimSpace(stamped); v != "" {
		return v
	}
	if bi == nil {
		return "devel"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev string
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	v := "devel+" + rev
	if dirty {
		v += "-dirty"
	}
	return v
}

func clip(s string) string {
	if len(s) > MaxLen {
		return s[:MaxLen]
	}
	return s
}
