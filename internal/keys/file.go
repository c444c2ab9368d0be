package keys

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// WriteFileAtomic replaces dir/name with data, mode 0600, creating dir
// (0700) if missing: the data goes to a temporary file in dir, which is
// fsynced and renamed into place, then dir is fsynced. A crash leaves the
// old file or the new one, never a torn one. It is how every file holding
// private key material is written (the disk key manager's keys, the agent's
// persisted SVIDs).
func WriteFileAtomic(dir, name string, data []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create directory %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
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
