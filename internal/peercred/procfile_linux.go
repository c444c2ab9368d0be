//go:build linux

package peercred

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// readFileAt opens the NUL-terminated path, reads it once at offset 0 into
// buf and closes it. Taking the path as bytes (built on the caller's stack)
// instead of a string avoids the allocation unix.Open makes to add the NUL.
func readFileAt(path []byte, buf []byte) (int, error) {
	var (
		fd    uintptr
		errno unix.Errno
		dirfd = unix.AT_FDCWD
	)
	for {
		fd, _, errno = unix.Syscall6(unix.SYS_OPENAT, uintptr(dirfd), uintptr(unsafe.Pointer(&path[0])),
			uintptr(unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW), 0, 0, 0)
		if errno != unix.EINTR {
			break
		}
	}
	if errno != 0 {
		return 0, fmt.Errorf("open %s: %w", string(path[:len(path)-1]), errno)
	}
	var (
		n   int
		err error
	)
	for {
		n, err = unix.Pread(int(fd), buf, 0)
		if err != unix.EINTR {
			break
		}
	}
	_ = unix.Close(int(fd))
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", string(path[:len(path)-1]), err)
	}
	return n, nil
}
