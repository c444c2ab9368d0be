// Package wal is the gateway's store-and-forward buffer: an append-only
// file of records, each fsynced before it is acknowledged, and a separate
// fsynced "forwarded up to" offset. A record is one line:
//
//	<crc32 of payload, 8 hex digits> <payload>\n
//
// so a torn write at a crash (no newline, or a checksum mismatch) is
// detected on Open and cut off.
package wal

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// MaxRecord bounds one record's payload.
const MaxRecord = 64 << 10

// WAL is safe for concurrent use.
type WAL struct {
	mu     sync.Mutex
	f      *os.File
	size   int64 // end of the last complete record
	acked  int64
	dir    string
	notify chan struct{}
}

// Open opens (creating) the log in dir, cutting off a torn tail.
func Open(dir string) (*WAL, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("wal: create dir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "readings.wal"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("wal: open: %w", err)
	}
	w := &WAL{f: f, dir: dir, notify: make(chan struct{}, 1)}
	if w.size, err = validPrefix(f); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Truncate(w.size); err != nil {
		f.Close()
		return nil, fmt.Errorf("wal: cut torn tail: %w", err)
	}
	if w.acked, err = readAcked(dir); err != nil {
		f.Close()
		return nil, err
	}
	if w.acked > w.size {
		f.Close()
		return nil, fmt.Errorf("wal: acknowledged offset %d is past the end of the log (%d)", w.acked, w.size)
	}
	return w, nil
}

// validPrefix returns the length of the longest prefix of complete,
// checksummed records.
func validPrefix(f *os.File) (int64, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}
	r := bufio.NewReaderSize(f, 64<<10)
	var n int64
	for {
		line, err := r.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			return n, nil // a partial line (or nothing) is left
		}
		if err != nil {
			return 0, fmt.Errorf("wal: read: %w", err)
		}
		if _, ok := decode(line); !ok {
			return n, nil
		}
		n += int64(len(line))
	}
}

func encode(payload []byte) []byte {
	return fmt.Appendf(nil, "%08x %s\n", crc32.ChecksumIEEE(payload), payload)
}

func decode(line []byte) ([]byte, bool) {
	line = bytes.TrimSuffix(line, []byte("\n"))
	if len(line) < 9 || line[8] != ' ' {
		return nil, false
	}
	sum, err := strconv.ParseUint(string(line[:8]), 16, 32)
	if err != nil || uint32(sum) != crc32.ChecksumIEEE(line[9:]) {
		return nil, false
	}
	return line[9:], true
}

// Append writes payload (one line, no newline in it) and fsyncs before
// returning: a nil error means the record survives a crash.
func (w *WAL) Append(payload []byte) error {
	if len(payload) == 0 || len(payload) > MaxRecord || bytes.ContainsAny(payload, "\n\r") {
		return errors.New("wal: record must be 1..64KiB on one line")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	rec := encode(payload)
	if _, err := w.f.WriteAt(rec, w.size); err != nil {
		// Leave size alone: the partial record is overwritten next time
		// and cut off on the next Open.
		return fmt.Errorf("wal: append: %w", err)
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("wal: fsync: %w", err)
	}
	w.size += int64(len(rec))
	select {
	case w.notify <- struct{}{}:
	default:
	}
	return nil
}

// Notify receives a value after appends (coalesced).
func (w *WAL) Notify() <-chan struct{} { return w.notify }

// Pending returns up to max records not yet acknowledged and the offset
// to pass to Ack once they have been delivered.
func (w *WAL) Pending(max int) (records [][]byte, next int64, err error) {
	w.mu.Lock()
	start, end := w.acked, w.size
	w.mu.Unlock()
	if start == end {
		return nil, end, nil
	}
	r := bufio.NewReaderSize(io.NewSectionReader(w.f, start, end-start), 64<<10)
	next = start
	for len(records) < max {
		line, err := r.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, 0, fmt.Errorf("wal: read: %w", err)
		}
		p, ok := decode(line)
		if !ok {
			return nil, 0, fmt.Errorf("wal: corrupt record at offset %d", next)
		}
		records = append(records, p)
		next += int64(len(line))
	}
	return records, next, nil
}

// Ack records that everything before offset has been delivered; it is
// fsynced (write to a temporary file, fsync, rename, fsync the dir).
func (w *WAL) Ack(offset int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if offset < w.acked || offset > w.size {
		return fmt.Errorf("wal: ack offset %d outside [%d, %d]", offset, w.acked, w.size)
	}
	tmp := filepath.Join(w.dir, "acked.tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("wal: ack: %w", err)
	}
	_, err = f.WriteString(strconv.FormatInt(offset, 10) + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(w.dir, "acked"))
	}
	if err == nil {
		err = syncDir(w.dir)
	}
	if err != nil {
		return fmt.Errorf("wal: ack: %w", err)
	}
	w.acked = offset
	return nil
}

// Backlog is the number of bytes not yet acknowledged.
func (w *WAL) Backlog() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.size - w.acked
}

// Close closes the log file.
func (w *WAL) Close() error { return w.f.Close() }

func readAcked(dir string) (int64, error) {
	b, err := os.ReadFile(filepath.Join(dir, "acked"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("wal: read acked offset: %w", err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("wal: bad acked offset %q", b)
	}
	return n, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
