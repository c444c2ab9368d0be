package peercred

import (
	"errors"
	"fmt"
	"strconv"
)

// ErrShortBuffer is returned by ReadProcFile when the file may be longer
// than the buffer (the read filled it).
var ErrShortBuffer = errors.New("proc file does not fit the buffer")

// maxProcPath bounds the <procDir>/<pid>/<name> paths ReadProcFile builds
// on the stack; longer ones fail.
const maxProcPath = 256

// ReadProcFile reads the file <procDir>/<pid>/<name> (procDir "" is
// /proc) into buf with one open, one read at offset 0 and one close, and
// returns the bytes read. It does not allocate. A missing process or file
// yields an error satisfying errors.Is(err, os.ErrNotExist); a read that
// fills buf returns the bytes and ErrShortBuffer (the file may be longer).
func ReadProcFile(procDir string, pid int32, name string, buf []byte) (int, error) {
	if procDir == "" {
		procDir = "/proc"
	}
	var path [maxProcPath]byte
	p := append(path[:0], procDir...)
	p = append(p, '/')
	p = strconv.AppendInt(p, int64(pid), 10)
	p = append(p, '/')
	p = append(p, name...)
	if len(p) >= len(path) { // room for the NUL is needed too
		return 0, fmt.Errorf("proc path for pid %d %s too long", pid, name)
	}
	p = append(p, 0)
	n, err := readFileAt(p, buf)
	if err != nil {
		return 0, err
	}
	if n == len(buf) {
		return n, ErrShortBuffer
	}
	return n, nil
}
