package agent

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/agent/manager"
	"github.com/sigil-spiffe/sigil/internal/datadir"
)

// The agent's data_dir records its trust domain in its persisted SVID and
// in its workload cache; either one of another trust domain is refused.
func TestCheckTrustDomain(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	for _, file := range []string{manager.StateFile, cache.FileName} {
		dir := t.TempDir()
		if err := CheckTrustDomain(dir, td); err != nil {
			t.Fatalf("empty data_dir: %v", err)
		}
		write := func(content string) {
			t.Helper()
			if err := os.WriteFile(filepath.Join(dir, file), []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		write(`{"version":1,"trust_domain":"example.org"}`)
		if err := CheckTrustDomain(dir, td); err != nil {
			t.Fatalf("%s of the own trust domain: %v", file, err)
		}
		write(`{"version":1,"trust_domain":"other.org"}`)
		err := CheckTrustDomain(dir, td)
		var tde *datadir.TrustDomainError
		if !errors.As(err, &tde) || tde.Found != "other.org" || tde.Configured != "example.org" || tde.Dir != dir ||
			tde.Source != "per "+filepath.Join(dir, file) {
			t.Fatalf("%s of another trust domain: %v", file, err)
		}
		// A file cut short is left to the component that owns it.
		write(`{"version":1,"trust_domain":"other.org","svids":{`)
		if err := CheckTrustDomain(dir, td); err != nil {
			t.Fatalf("unparsable %s: %v", file, err)
		}
	}
}
