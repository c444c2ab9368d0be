//go:build unix

package fsdelivery

import (
	"io/fs"
	"syscall"
)

// ownedAsWanted reports whether fi has the UID/GID t sets (either -1
// matches anything).
func ownedAsWanted(t *target, fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	return (t.UID == -1 || int(st.Uid) == t.UID) && (t.GID == -1 || int(st.Gid) == t.GID)
}
