package swtpm_test

import (
	"bytes"
	"crypto/x509"
	"os"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/testutil/swtpm"
)

func TestMain(m *testing.M) { os.Exit(swtpm.Main(m)) }

// TestSWTPMStartExtendCertificate: a started copy of the shared image
// answers, its EK certificate chains to the image's manufacturer CA, an
// extended PCR changes and a restart resets it.
func TestSWTPMStartExtendCertificate(t *testing.T) {
	im := swtpm.Shared(t)
	tp := im.Start(t)
	before := tp.PCR(t, 7)
	if !bytes.Equal(before, make([]byte, 32)) {
		t.Fatalf("PCR 7 of a fresh TPM = %x, want zeros", before)
	}
	tp.ExtendPCR(t, 7, []byte("bootloader"))
	after := tp.PCR(t, 7)
	if bytes.Equal(before, after) {
		t.Fatal("PCR 7 did not change")
	}
	tp.Restart(t)
	if got := tp.PCR(t, 7); !bytes.Equal(got, before) {
		t.Fatalf("PCR 7 after restart = %x, want %x", got, before)
	}
	ek := tp.EKCertificate(t)
	root, issuer := im.CACerts(t)
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	inter.AddCert(issuer)
	// The EK certificate's SAN (directory name only) is critical, which Go
	// does not handle.
	ek.UnhandledCriticalExtensions = nil
	if _, err := ek.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("EK certificate does not chain to the manufacturer CA: %v", err)
	}
	// A second copy is the same TPM (same EK).
	if ek2 := im.Start(t).EKCertificate(t); !bytes.Equal(ek2.Raw, ek.Raw) {
		t.Fatal("copies of one image have different EK certificates")
	}
}
