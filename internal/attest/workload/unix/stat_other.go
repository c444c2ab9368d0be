//go:build !linux

package unix

import (
	"os"
	"time"
)

// fileSig identifies a version of a file; the zero value is "missing".
type fileSig struct {
	size  int64
	mtime int64 // ns
}

// statFile returns path's signature and when it last changed (mtime: no
// ctime without a platform stat); ok is false when it cannot be stat'ed.
func statFile(path string) (sig fileSig, changedAt time.Time, ok bool) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileSig{}, time.Time{}, false
	}
	return fileSig{size: fi.Size(), mtime: fi.ModTime().UnixNano()}, fi.ModTime(), true
}
