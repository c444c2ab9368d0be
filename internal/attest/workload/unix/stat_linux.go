//go:build linux

package unix

import (
	"time"

	"golang.org/x/sys/unix"
)

// fileSig identifies a version of a file; the zero value is "missing".
type fileSig struct {
	dev, ino, size uint64
	mtime, ctime   int64 // ns
}

// statFile returns path's signature and when it last changed (ctime); ok
// is false when it cannot be stat'ed.
func statFile(path string) (sig fileSig, changedAt time.Time, ok bool) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fileSig{}, time.Time{}, false
	}
	sig = fileSig{
		dev: uint64(st.Dev), ino: uint64(st.Ino), size: uint64(st.Size),
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano(),
	}
	return sig, time.Unix(0, sig.ctime), true
}
