// Package tpmdev gives the agent's TPM users (the tpm node attestor and the
// tpm key manager) access to a TPM 2.0, one operation at a time.
//
// The TPM is named by a path:
//
//   - a character device: /dev/tpmrm0 (the default: the kernel's resource
//     manager, which flushes what a connection leaves loaded) or /dev/tpm0
//     (direct access);
//   - a unix socket speaking the raw TPM command protocol, as
//     `swtpm socket --server type=unixio,path=...` serves: an emulated TPM,
//     for tests and for devices without a hardware TPM.
//
// Users run each operation (a short sequence of commands) in Device.Do,
// which opens the TPM, runs it, and closes the TPM again; operations on the
// same path within a process are serialized, since without a resource
// manager (a socket, /dev/tpm0) the TPM has room for only about three
// loaded objects and one client. Without a resource manager, the first
// operation of a process also flushes transient objects and sessions a
// crashed predecessor may have left loaded: Sigil must then be the TPM's
// only user.
package tpmdev

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// DefaultPath is the kernel's TPM resource manager.
const DefaultPath = "/dev/tpmrm0"

// DefaultTimeout bounds one operation on a socket TPM whose context has no
// deadline.
const DefaultTimeout = 30 * time.Second

// maxResponse bounds a TPM response read from a socket (TPM responses are
// at most a few KiB; the spec's largest buffers are 4 KiB).
const maxResponse = 64 << 10

// Device is a TPM named by a path. The zero value is not usable; see New.
type Device struct {
	path string
}

// New returns the TPM at path ("" is DefaultPath). It does not open it.
func New(path string) *Device {
	if path == "" {
		path = DefaultPath
	}
	return &Device{path: path}
}

// Path returns the device path or socket.
func (d *Device) Path() string { return d.path }

// paths holds, per path, the lock that serializes operations within the
// process and whether stale handles were flushed.
var paths sync.Map // path -> *pathState

type pathState struct {
	sem     chan struct{} // capacity 1
	flushed bool          // guarded by sem
}

func (d *Device) lock(ctx context.Context) (*pathState, func(), error) {
	v, _ := paths.LoadOrStore(d.path, &pathState{sem: make(chan struct{}, 1)})
	ps := v.(*pathState)
	select {
	case ps.sem <- struct{}{}:
		return ps, func() { <-ps.sem }, nil
	case <-ctx.Done():
		return nil, nil, fmt.Errorf("wait for TPM %s: %w", d.path, ctx.Err())
	}
}

// Do opens the TPM, runs op and closes the TPM. Operations on one path are
// serialized within the process. op must flush every object and session
// it loads (with a resource manager the kernel does it anyway). Without a
// resource manager, the first operation of the process on a path first
// flushes what a predecessor that died mid-operation left loaded.
func (d *Device) Do(ctx context.Context, op func(tpm transport.TPM) error) error {
	ps, unlock, err := d.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	t, managed, err := d.open(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = t.Close() }()
	if !managed && !ps.flushed {
		if err := FlushAll(t); err != nil {
			return fmt.Errorf("TPM %s: flush stale handles: %w", d.path, err)
		}
		ps.flushed = true
	}
	return op(t)
}

// open opens the device or connects to the socket; managed reports a
// kernel resource manager.
func (d *Device) open(ctx context.Context) (transport.TPMCloser, bool, error) {
	fi, err := os.Stat(d.path)
	if err != nil {
		return nil, false, fmt.Errorf("TPM %s: %w", d.path, err)
	}
	switch {
	case fi.Mode()&os.ModeSocket != 0:
		t, err := dialSocket(ctx, d.path)
		if err != nil {
			return nil, false, fmt.Errorf("TPM socket %s: %w", d.path, err)
		}
		return t, false, nil
	case fi.Mode()&os.ModeCharDevice != 0:
		t, err := linuxtpm.Open(d.path)
		if err != nil {
			return nil, false, fmt.Errorf("TPM %s: %w", d.path, err)
		}
		return t, strings.HasPrefix(filepath.Base(d.path), "tpmrm"), nil
	}
	return nil, false, fmt.Errorf("TPM %s is neither a character device nor a unix socket (%s)", d.path, fi.Mode().Type())
}

// socketTPM sends commands over one connection to a TPM socket: a command
// is written whole, and a response is read as its 10-byte header and then
// exactly the length the header announces.
type socketTPM struct {
	conn net.Conn
}

func dialSocket(ctx context.Context, path string) (*socketTPM, error) {
	var dl net.Dialer
	conn, err := dl.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(DefaultTimeout)
	}
	if err := conn.SetDeadline(deadline); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return &socketTPM{conn: conn}, nil
}

func (s *socketTPM) Send(cmd []byte) ([]byte, error) {
	if _, err := s.conn.Write(cmd); err != nil {
		return nil, fmt.Errorf("write TPM command: %w", err)
	}
	var hdr [10]byte
	if _, err := io.ReadFull(s.conn, hdr[:]); err != nil {
		return nil, fmt.Errorf("read TPM response header: %w", err)
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < uint32(len(hdr)) || size > maxResponse {
		return nil, fmt.Errorf("TPM response announces %d bytes", size)
	}
	rsp := make([]byte, size)
	copy(rsp, hdr[:])
	if _, err := io.ReadFull(s.conn, rsp[len(hdr):]); err != nil {
		return nil, fmt.Errorf("read TPM response: %w", err)
	}
	return rsp, nil
}

func (s *socketTPM) Close() error { return s.conn.Close() }

// FlushAll flushes every loaded transient object and session: what a
// process that died mid-operation leaves in a TPM without a resource
// manager.
func FlushAll(t transport.TPM) error {
	var errs []error
	for _, first := range []tpm2.TPMHT{tpm2.TPMHTTransient, tpm2.TPMHTHMACSession, tpm2.TPMHTPolicySession} {
		rsp, err := tpm2.GetCapability{
			Capability:    tpm2.TPMCapHandles,
			Property:      uint32(first) << 24,
			PropertyCount: 64,
		}.Execute(t)
		if err != nil {
			return fmt.Errorf("list handles: %w", err)
		}
		hs, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			return err
		}
		for _, h := range hs.Handle {
			if tpm2.TPMHT(h>>24) != first {
				break // the next range
			}
			if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(t); err != nil {
				errs = append(errs, fmt.Errorf("flush 0x%08x: %w", uint32(h), err))
			}
		}
	}
	return errors.Join(errs...)
}

// Flush flushes a transient handle, ignoring failures (the handle may
// already be gone); for deferred clean-up.
func Flush(t transport.TPM, h tpm2.TPMHandle) {
	_, _ = (tpm2.FlushContext{FlushHandle: h}).Execute(t)
}
