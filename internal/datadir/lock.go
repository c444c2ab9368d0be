// Package datadir guards the data_dir of sigil-server and sigil-agent:
// one process at a time (Acquire), and one trust domain for its whole
// life (TrustDomainError, and the server's record of it, see
// ReadTrustDomain). It is shared by both binaries and imports nothing of
// either.
package datadir

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/sigil-spiffe/sigil/internal/keys"
)

// LockFile is the name, inside a data_dir, of the file the running process
// holds an exclusive flock(2) on. It contains that process's pid. The
// kernel releases the lock when the process exits, however it exits, so a
// killed process never leaves a lock behind; the file itself stays.
const LockFile = "sigil.lock"

// ErrInUse is matched (errors.Is) by the error of Acquire when another
// process holds the data_dir.
var ErrInUse = errors.New("data_dir is in use")

// InUseError is returned by Acquire when another process holds the lock.
type InUseError struct {
	Dir string
	// PID of the holder as it recorded it; 0 if unknown (e.g. it is
	// starting and has not written it yet).
	PID int
}

func (e *InUseError) Error() string {
	if e.PID > 0 {
		return fmt.Sprintf("data_dir %s is in use by pid %d", e.Dir, e.PID)
	}
	return fmt.Sprintf("data_dir %s is in use by another process", e.Dir)
}

// Is makes errors.Is(err, ErrInUse) true.
func (e *InUseError) Is(target error) bool { return target == ErrInUse }

// Lock is a held data_dir lock.
type Lock struct {
	dir  string
	f    *os.File
	once sync.Once
	err  error
}

// Acquire creates dir (0700) if missing and takes its lock without
// waiting: if another process (or another Acquire in this one) holds it,
// the error is an *InUseError naming the holder's pid.
func Acquire(dir string) (*Lock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data_dir: %w", err)
	}
	path := filepath.Join(dir, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open data_dir lock: %w", err)
	}
	if err := flock(f, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, &InUseError{Dir: dir, PID: readPID(f)}
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := writePID(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("record pid in %s: %w", path, err)
	}
	return &Lock{dir: dir, f: f}, nil
}

// Dir is the locked directory.
func (l *Lock) Dir() string { return l.dir }

// Release unlocks the data_dir. It is idempotent; a nil Lock is a no-op.
func (l *Lock) Release() error {
	if l == nil {
		return nil
	}
	l.once.Do(func() {
		// Closing the last descriptor of the open file releases the flock.
		l.err = l.f.Close()
	})
	return l.err
}

// RemoveLeftovers removes from each of dirs (the data_dir and any other
// directory this process writes with keys.WriteFileAtomic, such as a key
// directory) the temporary files of writes a killed process left behind;
// they may hold private keys, also of identities deleted since. Being a
// method of the held Lock, it never races a live process's write.
func (l *Lock) RemoveLeftovers(log *slog.Logger, dirs ...string) error {
	seen := make(map[string]bool, len(dirs))
	for _, d := range dirs {
		if d == "" || seen[filepath.Clean(d)] {
			continue
		}
		seen[filepath.Clean(d)] = true
		n, err := keys.RemoveTempFiles(d)
		if n > 0 {
			log.Info("Removed temporary files left by an interrupted write", "dir", d, "count", n)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func flock(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

func writePID(f *os.File) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	_, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return err
}

func readPID(f *os.File) int {
	b, err := io.ReadAll(io.LimitReader(f, 32))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}
