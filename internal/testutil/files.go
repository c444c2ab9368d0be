package testutil

import (
	"os"
	"testing"
)

// CheckMode reports (t.Errorf) when path's permission bits are not want.
// It does not follow a symbolic link at path: a link is reported with its
// own mode.
func CheckMode(t testing.TB, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s: mode %#o, want %#o", path, got, want)
	}
}
