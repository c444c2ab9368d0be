package keys

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

// Disk keeps one PKCS#8 PEM file per key ID in a directory. Files are 0600
// and the directory 0700; writes are atomic (temp file, fsync, rename), so a
// crash leaves either the old or the new key, never a torn file.
type Disk struct {
	dir string

	mu    sync.Mutex
	cache map[string]crypto.Signer
}

var _ Manager = (*Disk)(nil)

const pemTypePrivateKey = "PRIVATE KEY"

// NewDisk returns a manager storing keys under dir, creating it (0700) if
// needed and tightening its mode to 0700 if it is wider.
func NewDisk(dir string) (*Disk, error) {
	if dir == "" {
		return nil, errors.New("disk key manager: empty directory")
	}
	if err := CheckDir(dir); err != nil {
		return nil, fmt.Errorf("disk key manager: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("disk key manager: create %s: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("disk key manager: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("disk key manager: %s is not a directory", dir)
	}
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return nil, fmt.Errorf("disk key manager: chmod %s: %w", dir, err)
		}
	}
	return &Disk{dir: dir, cache: make(map[string]crypto.Signer)}, nil
}

// CheckDir makes, without creating anything, the check a key manager
// keeping its files in dir makes before it creates dir: dir is a
// directory, or it does not exist and its nearest existing ancestor is a
// directory. The plugins' configuration parsers run it, so that validate
// reports what start-up would fail on.
func CheckDir(dir string) error {
	for p := filepath.Clean(dir); ; {
		fi, err := os.Stat(p)
		switch {
		case err == nil && fi.IsDir():
			return nil
		case err == nil && p == filepath.Clean(dir):
			return fmt.Errorf("%s is not a directory", dir)
		case err == nil:
			return fmt.Errorf("%s cannot be created: %s is not a directory", dir, p)
		case !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR):
			return err
		}
		parent := filepath.Dir(p)
		if parent == p {
			return nil
		}
		p = parent
	}
}

// Dir returns the key directory.
func (d *Disk) Dir() string { return d.dir }

// GenerateKey creates a key of type t under id and persists it before
// returning, replacing any previous key with that ID.
func (d *Disk) GenerateKey(_ context.Context, id string, t Type) (crypto.Signer, error) {
	name, err := fileName(id)
	if err != nil {
		return nil, err
	}
	k, err := Generate(t)
	if err != nil {
		return nil, fmt.Errorf("generate key %q: %w", id, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("marshal key %q: %w", id, err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: pemTypePrivateKey, Bytes: der})

	d.mu.Lock()
	defer d.mu.Unlock()
	if err := WriteFileAtomic(d.dir, name, data); err != nil {
		return nil, fmt.Errorf("store key %q: %w", id, err)
	}
	d.cache[id] = k
	return k, nil
}

// GetKey returns the key stored under id (reading its file on first use), or
// an error wrapping ErrNotFound.
func (d *Disk) GetKey(_ context.Context, id string) (crypto.Signer, error) {
	name, err := fileName(id)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if k, ok := d.cache[id]; ok {
		return k, nil
	}
	path := filepath.Join(d.dir, name)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("key %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read key %q: %w", id, err)
	}
	k, err := parseKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("key %q in %s: %w", id, path, err)
	}
	d.cache[id] = k
	return k, nil
}

func parseKeyPEM(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != pemTypePrivateKey {
		return nil, errors.New("no PKCS#8 PRIVATE KEY PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse PKCS#8: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key of type %T cannot sign", k)
	}
	return s, nil
}

// fileName maps a key ID to a safe, injective file name: ASCII letters,
// digits, '-' and '.' are kept, every other byte (including '_') becomes
// "_hh"; a leading '.' is escaped too so no name is hidden, "." or "..".
func fileName(id string) (string, error) {
	if id == "" {
		return "", errors.New("empty key ID")
	}
	if len(id) > 200 {
		return "", fmt.Errorf("key ID too long (%d bytes)", len(id))
	}
	var b strings.Builder
	for i := 0; i < len(id); i++ {
		c := id[i]
		safe := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || (c == '.' && i > 0)
		if safe {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "_%02x", c)
		}
	}
	b.WriteString(".pem")
	return b.String(), nil
}

// DeleteKey removes the key stored under id (its file, durably); an
// unknown ID is not an error.
func (d *Disk) DeleteKey(_ context.Context, id string) error {
	name, err := fileName(id)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.cache, id)
	if err := RemoveFile(d.dir, name); err != nil {
		return fmt.Errorf("delete key %q: %w", id, err)
	}
	return nil
}
