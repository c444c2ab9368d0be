package keys

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// tempInfix separates the target's name from CreateTemp's random digits in
// the temporary files WriteFileAtomic creates: "." + name + tempInfix + digits.
const tempInfix = ".tmp-"

// WriteFileAtomic replaces dir/name with data, mode 0600, creating dir
// (0700) if missing: the data goes to a temporary file in dir, which is
// fsynced and renamed into place, then dir is fsynced. A crash leaves the
// old file or the new one, never a torn one. It is how every file holding
// private key material is written (the disk key manager's keys, the agent's
// persisted SVIDs).
//
// A process killed mid-write leaves the temporary file behind (it may
// hold a complete copy of the data, keys included); RemoveTempFiles, run
// at start-up by the only process writing the directory, removes them.
func WriteFileAtomic(dir, name string, data []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create directory %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+name+tempInfix+"*")
	if err != nil {
		return fmt.Errorf("create temporary file: %w", err)
	}
	if err := replaceWith(f, filepath.Join(dir, name), data); err != nil {
		_ = f.Close()
		_ = os.Remove(f.Name())
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory for sync: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	return nil
}

// replaceWith writes data to the temporary file f (0600), syncs and closes
// it and renames it to path.
func replaceWith(f *os.File, path string, data []byte) error {
	// CreateTemp uses 0600 already; be explicit against a future change.
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("chmod temporary file: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write temporary file: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync temporary file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close temporary file: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("rename into place: %w", err)
	}
	return nil
}

// RemoveFile deletes dir/name, if present, and fsyncs dir, so the removal
// survives a crash. It is how the files WriteFileAtomic wrote are deleted
// (an agent whose identity the server revoked forgets its SVIDs and keys).
func RemoveFile(dir, name string) error {
	if err := os.Remove(filepath.Join(dir, name)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("remove %s: %w", name, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory for sync: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	return nil
}

// RemoveTempFiles removes from dir the temporary files WriteFileAtomic
// leaves when its process is killed mid-write, and returns how many it
// removed. A missing dir is not an error. Call it only while no other
// process can be writing dir (sigil-server and sigil-agent call it after
// taking their data_dir lock), or an in-flight write would lose its file.
func RemoveTempFiles(dir string) (int, error) {
	des, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("list %s: %w", dir, err)
	}
	n := 0
	var errs []error
	for _, de := range des {
		if !de.Type().IsRegular() || !isTempName(de.Name()) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, de.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		n++
	}
	if len(errs) > 0 {
		return n, fmt.Errorf("remove temporary files in %s: %w", dir, errors.Join(errs...))
	}
	return n, nil
}

// isTempName reports whether name is one os.CreateTemp made from
// WriteFileAtomic's pattern: "." + a non-empty name + tempInfix + digits.
func isTempName(name string) bool {
	if !strings.HasPrefix(name, ".") {
		return false
	}
	i := strings.LastIndex(name, tempInfix)
	if i < 2 {
		return false
	}
	digits := name[i+len(tempInfix):]
	if digits == "" {
		return false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
