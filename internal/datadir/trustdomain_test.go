package datadir

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestTrustDomainRecord(t *testing.T) {
	dir := t.TempDir()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	other := spiffeid.RequireTrustDomainFromString("other.org")

	// A new (or pre-marker) data_dir: nothing recorded, any domain passes.
	if rec, err := CheckTrustDomain(dir, other); rec != "" || err != nil {
		t.Fatalf("empty data_dir: %q, %v", rec, err)
	}
	if err := WriteTrustDomain(dir, td); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, TrustDomainFile)); err != nil || string(b) != "example.org\n" {
		t.Fatalf("recorded %q, %v", b, err)
	}
	if rec, err := CheckTrustDomain(dir, td); rec != "example.org" || err != nil {
		t.Fatalf("own trust domain: %q, %v", rec, err)
	}
	_, err := CheckTrustDomain(dir, other)
	var tde *TrustDomainError
	if !errors.As(err, &tde) || tde.Found != "example.org" || tde.Configured != "other.org" || tde.Dir != dir {
		t.Fatalf("other trust domain: %v", err)
	}
	want := "data_dir " + dir + " belongs to trust domain example.org (recorded in " + filepath.Join(dir, TrustDomainFile) +
		"), not to the configured other.org: give other.org a data_dir of its own, or empty this one to start over"
	if err.Error() != want {
		t.Fatalf("error\n%q, want\n%q", err, want)
	}

	// Anything but a trust domain name is an error, not "nothing recorded".
	if err := os.WriteFile(filepath.Join(dir, TrustDomainFile), []byte("Not A Domain\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := CheckTrustDomain(dir, td); err == nil {
		t.Fatal("garbage in the trust_domain file accepted")
	}
}
