package keys

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFileAtomic(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "missing", "dir")
	for _, data := range []string{"first", "second, longer than the first"} {
		if err := WriteFileAtomic(dir, "f.json", []byte(data)); err != nil {
			t.Fatalf("WriteFileAtomic(%q): %v", data, err)
		}
		got, err := os.ReadFile(filepath.Join(dir, "f.json"))
		if err != nil || string(got) != data {
			t.Fatalf("read back %q, %v; want %q", got, err, data)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "f.json"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode %o, want 600", fi.Mode().Perm())
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("created directory mode %o, want 700", di.Mode().Perm())
	}
	names, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 1 {
		t.Errorf("directory holds %d files, want only f.json (temporary files left behind?)", len(names))
	}
	// A failed rename (the name is a directory) leaves no temporary file.
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(dir, "sub", []byte("bad")); err == nil {
		t.Error("replacing a directory succeeded")
	}
	if names, _ := os.ReadDir(dir); len(names) != 2 {
		t.Errorf("failed write left %d entries, want 2 (f.json, sub)", len(names))
	}
}

// Temporary files of interrupted writes are removed; nothing else is.
func TestRemoveTempFiles(t *testing.T) {
	dir := t.TempDir()
	// A real leftover: the name WriteFileAtomic's CreateTemp produces.
	f, err := os.CreateTemp(dir, ".workload-cache.json"+tempInfix+"*")
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"svids":{"e1":{"key":"secret"}}`)
	f.Close()
	leftovers := []string{filepath.Base(f.Name()), ".agent-svid-a.pem.tmp-123"}
	if err := os.WriteFile(filepath.Join(dir, leftovers[1]), []byte("key"), 0o600); err != nil {
		t.Fatal(err)
	}
	kept := []string{"workload-cache.json", "agent-svid-a.pem", "sigil.lock", ".tmp-1", "..tmp-1", ".x.tmp-", ".x.tmp-12a", "x.tmp-1", ".sdeadbeef", ".x.tmp-1.bak"}
	for _, n := range kept {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(n), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A directory with a matching name is not a leftover of ours.
	if err := os.Mkdir(filepath.Join(dir, ".d.tmp-1"), 0o700); err != nil {
		t.Fatal(err)
	}
	kept = append(kept, ".d.tmp-1")

	n, err := RemoveTempFiles(dir)
	if err != nil || n != len(leftovers) {
		t.Fatalf("RemoveTempFiles = %d, %v; want %d", n, err, len(leftovers))
	}
	for _, l := range leftovers {
		if _, err := os.Lstat(filepath.Join(dir, l)); !os.IsNotExist(err) {
			t.Errorf("%s not removed: %v", l, err)
		}
	}
	for _, k := range kept {
		if _, err := os.Lstat(filepath.Join(dir, k)); err != nil {
			t.Errorf("%s removed: %v", k, err)
		}
	}
	if n, err := RemoveTempFiles(filepath.Join(dir, "missing")); n != 0 || err != nil {
		t.Fatalf("missing dir: %d, %v", n, err)
	}
}
