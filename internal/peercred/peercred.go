// Package peercred identifies the process at the other end of a unix-socket
// connection: its PID, UID and GID from the kernel (SO_PEERCRED) plus the
// process start time from /proc/<pid>/stat, which lets callers detect that
// the PID was recycled by another process between the connection and the
// moment they act on it (see Cred.StillAlive).
//
// NewCredentials returns gRPC transport credentials for a unix listener whose
// AuthInfo carries the Cred; handlers read it back with FromContext.
package peercred

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// ErrProcessChanged is returned by StillAlive when the PID now belongs to a
// different process, or when the process has exited.
var ErrProcessChanged = errors.New("peer process has exited or its PID was reused")

// Cred is what the kernel says about a unix-socket peer.
type Cred struct {
	PID int32
	UID uint32
	GID uint32
	// StartTime is field 22 of /proc/<pid>/stat (clock ticks since boot)
	// as read right after the connection was accepted.
	StartTime uint64
}

// String renders the credentials for logs.
func (c Cred) String() string {
	return fmt.Sprintf("pid=%d uid=%d gid=%d", c.PID, c.UID, c.GID)
}

// StillAlive re-reads the start time of c.PID and fails with
// ErrProcessChanged when the process has exited or the PID now belongs to
// another process.
func (c Cred) StillAlive() error {
	start, err := StartTime(c.PID)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("pid %d: %w", c.PID, ErrProcessChanged)
		}
		return fmt.Errorf("pid %d: %w", c.PID, err)
	}
	if start != c.StartTime {
		return fmt.Errorf("pid %d: start time %d, expected %d: %w", c.PID, start, c.StartTime, ErrProcessChanged)
	}
	return nil
}

// StartTime returns field 22 (starttime) of /proc/<pid>/stat. A missing
// process yields an error satisfying errors.Is(err, os.ErrNotExist).
func StartTime(pid int32) (uint64, error) {
	data, err := os.ReadFile("/proc/" + strconv.FormatInt(int64(pid), 10) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("read process stat: %w", err)
	}
	return parseStartTime(string(data))
}

// parseStartTime extracts field 22 from the contents of /proc/<pid>/stat.
// Field 2 (comm) is parenthesised and may contain spaces and parentheses, so
// fields are counted from the last ')'.
func parseStartTime(stat string) (uint64, error) {
	end := strings.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, errors.New("malformed process stat: no ')' after comm")
	}
	fields := strings.Fields(stat[end+1:])
	// fields[0] is field 3 (state), so field 22 is fields[19].
	const idx = 22 - 3
	if len(fields) <= idx {
		return 0, fmt.Errorf("malformed process stat: %d fields after comm", len(fields))
	}
	v, err := strconv.ParseUint(fields[idx], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("malformed process stat starttime %q: %w", fields[idx], err)
	}
	return v, nil
}

// AuthInfo is the credentials.AuthInfo attached to connections accepted
// through NewCredentials.
type AuthInfo struct {
	credentials.CommonAuthInfo
	Cred Cred
	// Err is set when the peer credentials could not be read; the
	// connection is still accepted so that the RPC can fail with a clear
	// status instead of a transport error.
	Err error
}

// AuthType implements credentials.AuthInfo.
func (AuthInfo) AuthType() string { return "peercred" }

// FromContext returns the credentials of the caller of a gRPC handler served
// with NewCredentials. ok is false when there are none (other transport, or
// reading them failed).
func FromContext(ctx context.Context) (Cred, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return Cred{}, false
	}
	ai, ok := p.AuthInfo.(AuthInfo)
	if !ok || ai.Err != nil {
		return Cred{}, false
	}
	return ai.Cred, true
}

// ErrorFromContext returns why FromContext has no credentials for a
// connection that went through NewCredentials, or nil.
func ErrorFromContext(ctx context.Context) error {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return errors.New("no peer in context")
	}
	ai, ok := p.AuthInfo.(AuthInfo)
	if !ok {
		return fmt.Errorf("connection was not accepted with peer credentials (auth info %T)", p.AuthInfo)
	}
	return ai.Err
}

// NewCredentials returns server-side transport credentials for a unix
// listener: no encryption (the socket is local), AuthInfo carries the peer's
// Cred. Client handshakes pass through unchanged.
func NewCredentials() credentials.TransportCredentials { return transportCreds{} }

type transportCreds struct{}

func (transportCreds) ClientHandshake(_ context.Context, _ string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return conn, AuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
}

func (transportCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	cred, err := FromConn(conn)
	return conn, AuthInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		Cred:           cred,
		Err:            err,
	}, nil
}

func (transportCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (t transportCreds) Clone() credentials.TransportCredentials { return t }

func (transportCreds) OverrideServerName(string) error { return nil }
