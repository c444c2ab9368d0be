package datadir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/sigil-spiffe/sigil/internal/keys"
)

// CAJournalFile is the name, inside the server's data_dir, of the file
// recording the name of the server's CA journal in the datastore (its
// name and a newline). Servers sharing one database each keep their own CA
// (their keys are in their own data_dir) and so their own journal; the
// server writes the file once its CA is initialized and reads it on every
// later start.
const CAJournalFile = "ca_journal"

// maxJournalName bounds a recorded journal name.
const maxJournalName = 64

// ReadCAJournal returns the journal name recorded in dir's CAJournalFile,
// or "" when there is none.
func ReadCAJournal(dir string) (string, error) {
	path := filepath.Join(dir, CAJournalFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	name := strings.TrimSpace(string(b))
	if err := checkJournalName(name); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return name, nil
}

// WriteCAJournal records name in dir's CAJournalFile (atomically).
func WriteCAJournal(dir, name string) error {
	if err := checkJournalName(name); err != nil {
		return err
	}
	if err := keys.WriteFileAtomic(dir, CAJournalFile, []byte(name+"\n")); err != nil {
		return fmt.Errorf("record the CA journal of data_dir %s: %w", dir, err)
	}
	return nil
}

func checkJournalName(name string) error {
	if name == "" || len(name) > maxJournalName {
		return fmt.Errorf("CA journal name must be 1 to %d characters", maxJournalName)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return errors.New("CA journal name may hold only a-z, 0-9, '-' and '_'")
		}
	}
	return nil
}
