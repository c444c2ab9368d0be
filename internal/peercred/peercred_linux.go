//go:build linux

package peercred

import (
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// FromConn reads the peer credentials of a unix-socket connection.
func FromConn(c net.Conn) (Cred, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return Cred{}, fmt.Errorf("peer credentials: connection type %T is not a unix socket", c)
	}
	if _, isUnix := c.LocalAddr().(*net.UnixAddr); !isUnix {
		return Cred{}, fmt.Errorf("peer credentials: connection on %s is not a unix socket", c.LocalAddr().Network())
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return Cred{}, fmt.Errorf("peer credentials: raw connection: %w", err)
	}
	var (
		ucred   *unix.Ucred
		credErr error
	)
	if err := raw.Control(func(fd uintptr) {
		ucred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", err)
	}
	if credErr != nil {
		return Cred{}, fmt.Errorf("peer credentials: SO_PEERCRED: %w", credErr)
	}
	if ucred.Pid <= 0 {
		// The peer lives in a PID namespace we cannot see into.
		return Cred{}, fmt.Errorf("peer credentials: kernel reported pid %d (peer outside our PID namespace?)", ucred.Pid)
	}
	start, err := StartTime(ucred.Pid)
	if err != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", err)
	}
	return Cred{PID: ucred.Pid, UID: ucred.Uid, GID: ucred.Gid, StartTime: start}, nil
}
