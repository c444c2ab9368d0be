package fsdelivery

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Names inside a target directory.
const (
	CurrentLink    = "current"
	GenerationsDir = ".generations"
)

// dirMode is 0700 plus r-x for group/other when the file mode lets them
// read, so the files they may read are reachable.
func dirMode(fileMode fs.FileMode) fs.FileMode {
	m := fs.FileMode(0o700)
	if fileMode&0o040 != 0 {
		m |= 0o050
	}
	if fileMode&0o004 != 0 {
		m |= 0o005
	}
	return m
}

func (t *target) chowns() bool { return t.UID != -1 || t.GID != -1 }

func (t *target) chown(path string) error {
	if !t.chowns() {
		return nil
	}
	if err := os.Lchown(path, t.UID, t.GID); err != nil {
		return fmt.Errorf("chown %s: %w", path, err)
	}
	return nil
}

// writeGeneration writes files as a new generation of t's directory,
// points current at it, updates the stable symlinks and prunes old
// generations. It returns the generation number.
func writeGeneration(t *target, files []file) (uint64, error) {
	dir := t.Directory
	dmode := dirMode(t.mode)
	if err := ensureTargetDir(t, dmode); err != nil {
		return 0, err
	}
	gens := filepath.Join(dir, GenerationsDir)
	if err := ensureOwnDir(t, gens, dmode); err != nil {
		return 0, err
	}
	prev := currentGeneration(dir)
	n, err := nextGeneration(gens)
	if err != nil {
		return 0, err
	}
	name := strconv.FormatUint(n, 10)
	gdir := filepath.Join(gens, name)
	if err := writeGenerationDir(t, gdir, dmode, files); err != nil {
		_ = os.RemoveAll(gdir)
		return 0, err
	}
	if err := syncDir(gens); err != nil {
		return 0, err
	}
	// The swap: one rename(2) of a fresh symlink over current.
	if err := replaceSymlink(t, dir, CurrentLink, filepath.Join(GenerationsDir, name)); err != nil {
		_ = os.RemoveAll(gdir)
		return 0, err
	}
	if err := syncDir(dir); err != nil {
		return 0, err
	}
	var errs []error
	want := make(map[string]bool, len(files))
	for _, f := range files {
		want[f.name] = true
		errs = append(errs, replaceSymlink(t, dir, f.name, filepath.Join(CurrentLink, f.name)))
	}
	errs = append(errs, removeStaleLinks(dir, want), prune(gens, name, prev), syncDir(dir))
	return n, errors.Join(errs...)
}

// adoptCurrent reports whether the current generation on disk holds
// exactly files, with the modes (and owner) t asks for, and its stable
// links are in place (they are repaired if not).
func adoptCurrent(t *target, files []file) bool {
	gen := currentGeneration(t.Directory)
	if gen == "" {
		return false
	}
	gdir := filepath.Join(t.Directory, GenerationsDir, gen)
	des, err := os.ReadDir(gdir)
	if err != nil || len(des) != len(files) {
		return false
	}
	want := make(map[string]bool, len(files))
	for _, f := range files {
		want[f.name] = true
		p := filepath.Join(gdir, f.name)
		fi, err := os.Lstat(p)
		if err != nil || !fi.Mode().IsRegular() {
			return false
		}
		perm := t.mode
		if f.secret {
			perm = 0o600
		}
		if fi.Mode().Perm() != perm || !ownedAsWanted(t, fi) {
			return false
		}
		data, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(data, f.data) {
			return false
		}
	}
	var errs []error
	for _, f := range files {
		errs = append(errs, replaceSymlink(t, t.Directory, f.name, filepath.Join(CurrentLink, f.name)))
	}
	errs = append(errs, removeStaleLinks(t.Directory, want))
	return errors.Join(errs...) == nil
}

// ensureTargetDir creates the target directory (mode dmode, chowned) and
// missing parents (0755 before umask) when it does not exist; an existing
// one keeps its mode and owner.
func ensureTargetDir(t *target, dmode fs.FileMode) error {
	fi, err := os.Stat(t.Directory)
	switch {
	case err == nil:
		if !fi.IsDir() {
			return fmt.Errorf("%s exists and is not a directory", t.Directory)
		}
		return nil
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("stat target directory: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(t.Directory), 0o755); err != nil {
		return fmt.Errorf("create parent of target directory: %w", err)
	}
	if err := os.Mkdir(t.Directory, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create target directory: %w", err)
	}
	if err := os.Chmod(t.Directory, dmode); err != nil {
		return fmt.Errorf("chmod target directory: %w", err)
	}
	return t.chown(t.Directory)
}

// ensureOwnDir creates or fixes a directory that belongs to fsdelivery.
func ensureOwnDir(t *target, path string, dmode fs.FileMode) error {
	if err := os.Mkdir(path, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create %s: %w", path, err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s exists and is not a directory", path)
	}
	if fi.Mode().Perm() != dmode {
		if err := os.Chmod(path, dmode); err != nil {
			return fmt.Errorf("chmod %s: %w", path, err)
		}
	}
	return t.chown(path)
}

// currentGeneration returns the generation name current points to, or "".
func currentGeneration(dir string) string {
	target, err := os.Readlink(filepath.Join(dir, CurrentLink))
	if err != nil {
		return ""
	}
	rel, ok := strings.CutPrefix(filepath.Clean(target), GenerationsDir+string(filepath.Separator))
	if !ok || strings.ContainsRune(rel, filepath.Separator) {
		return ""
	}
	return rel
}

// nextGeneration is one more than the highest numbered generation present.
func nextGeneration(gens string) (uint64, error) {
	des, err := os.ReadDir(gens)
	if err != nil {
		return 0, fmt.Errorf("list generations: %w", err)
	}
	var top uint64
	for _, de := range des {
		if n, err := strconv.ParseUint(de.Name(), 10, 64); err == nil && n > top {
			top = n
		}
	}
	return top + 1, nil
}

// writeGenerationDir creates gdir and writes every file into it, durably.
func writeGenerationDir(t *target, gdir string, dmode fs.FileMode, files []file) error {
	if err := os.Mkdir(gdir, 0o700); err != nil {
		return fmt.Errorf("create generation directory: %w", err)
	}
	if err := t.chown(gdir); err != nil {
		return err
	}
	for _, f := range files {
		perm := t.mode
		if f.secret {
			perm = 0o600
		}
		if err := writeFile(t, filepath.Join(gdir, f.name), perm, f.data); err != nil {
			return err
		}
	}
	if err := syncDir(gdir); err != nil {
		return err
	}
	if err := os.Chmod(gdir, dmode); err != nil {
		return fmt.Errorf("chmod generation directory: %w", err)
	}
	return nil
}

// writeFile creates path exclusively with mode 0600, sets its final mode
// and owner before any content is written, then writes and fsyncs it.
func writeFile(t *target, path string, perm fs.FileMode, data []byte) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", filepath.Base(path), err)
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close %s: %w", filepath.Base(path), cerr)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("chmod %s: %w", filepath.Base(path), err)
	}
	if t.chowns() {
		if err := f.Chown(t.UID, t.GID); err != nil {
			return fmt.Errorf("chown %s: %w", filepath.Base(path), err)
		}
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(path), err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", filepath.Base(path), err)
	}
	return nil
}

// replaceSymlink makes dir/name a symlink to target, atomically: a fresh
// symlink renamed over whatever is there. An existing correct link is left.
func replaceSymlink(t *target, dir, name, target string) error {
	link := filepath.Join(dir, name)
	if cur, err := os.Readlink(link); err == nil && cur == target {
		return nil
	}
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale %s: %w", tmp, err)
	}
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("symlink %s: %w", name, err)
	}
	if err := t.chown(tmp); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, link); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("replace %s: %w", name, err)
	}
	return nil
}

// removeStaleLinks removes the stable symlinks (name -> current/name) of
// files the current generation no longer has.
func removeStaleLinks(dir string, want map[string]bool) error {
	des, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list target directory: %w", err)
	}
	var errs []error
	for _, de := range des {
		if de.Type()&fs.ModeSymlink == 0 || want[de.Name()] || de.Name() == CurrentLink {
			continue
		}
		p := filepath.Join(dir, de.Name())
		if target, err := os.Readlink(p); err == nil && target == filepath.Join(CurrentLink, de.Name()) {
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove stale link %s: %w", de.Name(), err))
			}
		}
	}
	return errors.Join(errs...)
}

// removeDelivered removes what fsdelivery wrote to dir: the stable
// links, the current link and every generation, durably. The directory
// itself, and files fsdelivery did not write, stay. A missing dir is not
// an error.
func removeDelivered(dir string) error {
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	// Links first: no name keeps pointing into a generation being removed.
	errs := []error{removeStaleLinks(dir, nil)}
	if err := os.Remove(filepath.Join(dir, CurrentLink)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove %s: %w", CurrentLink, err))
	}
	if err := os.RemoveAll(filepath.Join(dir, GenerationsDir)); err != nil {
		errs = append(errs, fmt.Errorf("remove generations: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return syncDir(dir)
}

// prune removes every generation but cur and prev.
func prune(gens, cur, prev string) error {
	des, err := os.ReadDir(gens)
	if err != nil {
		return fmt.Errorf("list generations: %w", err)
	}
	var errs []error
	for _, de := range des {
		if de.Name() == cur || de.Name() == prev {
			continue
		}
		if err := os.RemoveAll(filepath.Join(gens, de.Name())); err != nil {
			errs = append(errs, fmt.Errorf("remove old generation %s: %w", de.Name(), err))
		}
	}
	return errors.Join(errs...)
}

func syncDir(path string) error {
	d, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open %s for fsync: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return nil
}
