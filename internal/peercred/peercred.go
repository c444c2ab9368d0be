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
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"syscall"

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
// another process. It costs one open, read and close of /proc/<pid>/stat
// and does not allocate unless it fails.
func (c Cred) StillAlive() error {
	start, err := StartTime(c.PID)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("pid %d: %w", c.PID, ErrProcessChanged)
		}
		return fmt.Errorf("pid %d: %w", c.PID, err)
	}
	if start != c.StartTime {
		return fmt.Errorf("pid %d: start time %d, expected %d: %w", c.PID, start, c.StartTime, ErrProcessChanged)
	}
	return nil
}

// statPrefix bounds the bytes of /proc/<pid>/stat read for the start
// time. Field 22 ends within the first ~450 bytes whatever the values: the
// pid, a comm of at most 16 bytes plus parentheses, a state letter and 18
// numbers of at most 20 digits each before it.
const statPrefix = 1024

// StartTime returns field 22 (starttime) of /proc/<pid>/stat. A missing
// process yields an error satisfying errors.Is(err, os.ErrNotExist). It
// reads only the start of the file, into a stack buffer.
func StartTime(pid int32) (uint64, error) {
	var buf [statPrefix]byte
	n, err := ReadProcFile("", pid, "stat", buf[:])
	if err != nil && !errors.Is(err, ErrShortBuffer) {
		return 0, fmt.Errorf("read process stat: %w", err)
	}
	return parseStartTime(buf[:n])
}

// parseStartTime extracts field 22 from (a prefix of) /proc/<pid>/stat.
// Field 2 (comm) is parenthesised and may contain spaces and parentheses,
// so fields are counted from the last ')': no later field can contain one.
// The field must be followed by a space or newline, so a value cut off at
// the end of a prefix is not mistaken for the whole.
func parseStartTime(stat []byte) (uint64, error) {
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, errors.New("malformed process stat: no ')' after comm")
	}
	rest := stat[end+1:]
	// rest is " <field 3> <field 4> ...": skip to the start of field 22.
	i := 0
	for f := 3; f <= 22; f++ {
		if i >= len(rest) || rest[i] != ' ' {
			return 0, fmt.Errorf("malformed process stat: %d fields after comm", f-3)
		}
		i++
		if f == 22 {
			break
		}
		for i < len(rest) && rest[i] != ' ' {
			i++
		}
	}
	j := i
	for j < len(rest) && rest[j] != ' ' && rest[j] != '\n' {
		j++
	}
	if j == len(rest) {
		return 0, errors.New("malformed process stat: starttime cut off")
	}
	v, ok := parseUint(rest[i:j])
	if !ok {
		return 0, fmt.Errorf("malformed process stat starttime %q", string(rest[i:j]))
	}
	return v, nil
}

// parseUint parses a non-empty decimal without sign, rejecting overflow.
func parseUint(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (math.MaxUint64-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	return v, true
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
