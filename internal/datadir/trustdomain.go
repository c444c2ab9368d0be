package datadir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/keys"
)

// TrustDomainFile is the name, inside the server's data_dir, of the file
// recording the trust domain the data_dir belongs to (its name and a
// newline). The server writes it once its state is known to be of its
// trust domain, and checks it first thing on every later start, before it
// opens (or migrates) the datastore. The agent needs no such file: its
// persisted SVID and cache record their trust domain already.
const TrustDomainFile = "trust_domain"

// TrustDomainError is returned when a data_dir holds the state of another
// trust domain than the configured one. Start-up stops with it and
// changes nothing in the data_dir.
type TrustDomainError struct {
	Dir        string
	Found      string // the trust domain of the state in Dir
	Configured string
	// Source says where Found was read, e.g. "recorded in D/trust_domain".
	Source string
}

func (e *TrustDomainError) Error() string {
	return fmt.Sprintf("data_dir %s belongs to trust domain %s (%s), not to the configured %s: "+
		"give %s a data_dir of its own, or empty this one to start over", e.Dir, e.Found, e.Source, e.Configured, e.Configured)
}

// ReadTrustDomain returns the trust domain recorded in dir's
// TrustDomainFile, or "" when there is none.
func ReadTrustDomain(dir string) (string, error) {
	path := filepath.Join(dir, TrustDomainFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	name := strings.TrimSpace(string(b))
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		return "", fmt.Errorf("%s does not hold a trust domain name: %w", path, err)
	}
	return td.Name(), nil
}

// CheckTrustDomain returns a *TrustDomainError if dir's TrustDomainFile
// records another trust domain than td. recorded is what the file holds
// ("" when none yet).
func CheckTrustDomain(dir string, td spiffeid.TrustDomain) (recorded string, err error) {
	recorded, err = ReadTrustDomain(dir)
	if err != nil {
		return "", err
	}
	if recorded != "" && recorded != td.Name() {
		return recorded, &TrustDomainError{
			Dir: dir, Found: recorded, Configured: td.Name(),
			Source: "recorded in " + filepath.Join(dir, TrustDomainFile),
		}
	}
	return recorded, nil
}

// WriteTrustDomain records td in dir's TrustDomainFile (atomically).
func WriteTrustDomain(dir string, td spiffeid.TrustDomain) error {
	if err := keys.WriteFileAtomic(dir, TrustDomainFile, []byte(td.Name()+"\n")); err != nil {
		return fmt.Errorf("record the trust domain of data_dir %s: %w", dir, err)
	}
	return nil
}
