package datadir

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCAJournalFile(t *testing.T) {
	dir := t.TempDir()
	if name, err := ReadCAJournal(dir); err != nil || name != "" {
		t.Fatalf("no file: %q, %v", name, err)
	}
	if err := WriteCAJournal(dir, "ca-0123abcd"); err != nil {
		t.Fatal(err)
	}
	if name, err := ReadCAJournal(dir); err != nil || name != "ca-0123abcd" {
		t.Fatalf("ReadCAJournal = %q, %v", name, err)
	}
	for _, bad := range []string{"", "CA", "ca/../x", "ca x", string(make([]byte, 65))} {
		if err := WriteCAJournal(dir, bad); err == nil {
			t.Errorf("WriteCAJournal(%q) accepted", bad)
		}
		if err := os.WriteFile(filepath.Join(dir, CAJournalFile), []byte(bad+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadCAJournal(dir); err == nil {
			t.Errorf("ReadCAJournal of %q accepted", bad)
		}
	}
}
