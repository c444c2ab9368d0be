// Package unixsock binds the unix sockets of both binaries (the server's
// admin API, the agent's Workload API) so that one process never takes
// over or deletes another's socket:
//
//   - a socket another process still answers on is refused (ErrInUse);
//     one nobody answers on (left by a crash) is replaced;
//   - the socket is bound under a temporary name, given its permissions
//     and renamed into place, so it is never reachable with looser ones;
//   - Close removes the socket file only if the path still names the
//     socket this listener bound, never a successor's.
//
// The check-and-replace and the check-and-remove run under an flock(2) on
// the socket's directory, so two Sigil processes starting or stopping on
// the same path at once are serialized.
package unixsock

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrInUse is wrapped by Listen's error when another process listens on
// the path.
var ErrInUse = errors.New("in use by another process")

// maxPathLen is the longest path that fits sun_path (108 bytes with its
// terminating NUL).
const maxPathLen = 107

// dialTimeout bounds the liveness probe of an existing socket.
const dialTimeout = time.Second

// Listener is a bound unix socket. Its Close removes the socket file if it
// is still the one it bound.
type Listener struct {
	*net.UnixListener
	path     string
	dev, ino uint64

	once      sync.Once
	removeErr error
}

// Listen binds path with permissions mode, creating its parent directory
// with dirMode when missing. A regular file (or anything but a socket) at
// path is an error and left alone; a socket another process accepts
// connections on is an error wrapping ErrInUse; a dead socket is replaced.
func Listen(path string, mode, dirMode os.FileMode) (*Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	var l *Listener
	err := withDirLock(dir, func() error {
		var err error
		l, err = listenLocked(path, mode)
		return err
	})
	if err != nil {
		return nil, err
	}
	return l, nil
}

func listenLocked(path string, mode os.FileMode) (*Listener, error) {
	stale := false
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("socket path %s exists and is not a socket", path)
		}
		if Live(path) {
			return nil, fmt.Errorf("socket %s is %w", path, ErrInUse)
		}
		stale = true
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("socket path: %w", err)
	}

	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("socket temp name: %w", err)
	}
	tmp := filepath.Join(filepath.Dir(path), ".s"+hex.EncodeToString(rnd[:]))
	if len(tmp) > maxPathLen {
		// No room for a temporary name: bind in place (the socket then
		// has the umask's permissions until the chmod below).
		tmp = path
		if stale {
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("remove stale socket: %w", err)
			}
		}
	}
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Net: "unix", Name: tmp})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// Removal is ours to decide (Close), not the runtime's.
	ul.SetUnlinkOnClose(false)
	fail := func(err error) (*Listener, error) {
		ul.Close()
		os.Remove(tmp)
		return nil, err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return fail(fmt.Errorf("set socket permissions: %w", err))
	}
	if tmp != path {
		// Atomically replaces a stale socket.
		if err := os.Rename(tmp, path); err != nil {
			return fail(fmt.Errorf("move socket into place: %w", err))
		}
		tmp = path
	}
	dev, ino, err := fileID(path)
	if err != nil {
		return fail(fmt.Errorf("stat socket: %w", err))
	}
	return &Listener{UnixListener: ul, path: path, dev: dev, ino: ino}, nil
}

// Live reports whether a process accepts connections on the unix socket
// at path.
func Live(path string) bool {
	c, err := net.DialTimeout("unix", path, dialTimeout)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// Path is the socket's path.
func (l *Listener) Path() string { return l.path }

// Close removes the socket file if path still names the socket this
// listener bound (a successor may have replaced it after this listener
// stopped answering), then stops listening. It is safe to call more than
// once; only the first call removes.
func (l *Listener) Close() error {
	l.once.Do(func() {
		// While our socket is open its inode cannot be freed and reused,
		// so an equal (dev, inode) at path is ours.
		l.removeErr = withDirLock(filepath.Dir(l.path), func() error {
			dev, ino, err := fileID(l.path)
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("stat socket %s: %w", l.path, err)
			}
			if dev != l.dev || ino != l.ino {
				return nil
			}
			if err := os.Remove(l.path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("remove socket %s: %w", l.path, err)
			}
			return nil
		})
	})
	return errors.Join(l.UnixListener.Close(), l.removeErr)
}

func fileID(path string) (dev, ino uint64, err error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return 0, 0, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, fmt.Errorf("no inode for %s", path)
	}
	return uint64(st.Dev), uint64(st.Ino), nil // not uint64 on every platform
}

// withDirLock runs fn holding an exclusive flock on dir.
func withDirLock(dir string, fn func() error) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open socket directory: %w", err)
	}
	defer d.Close()
	for {
		err = unix.Flock(int(d.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("lock socket directory %s: %w", dir, err)
	}
	// Closing d releases the lock.
	return fn()
}
