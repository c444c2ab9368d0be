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
