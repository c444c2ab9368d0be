//go:build !linux

package peercred

import (
	"errors"
	"net"
)

// FromConn is only implemented on Linux.
func FromConn(net.Conn) (Cred, error) {
	return Cred{}, errors.New("peer credentials are only supported on linux")
}
