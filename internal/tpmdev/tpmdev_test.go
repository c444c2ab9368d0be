package tpmdev_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/sigil-spiffe/sigil/internal/testutil/swtpm"
	"github.com/sigil-spiffe/sigil/internal/tpmdev"
)

func TestMain(m *testing.M) { os.Exit(swtpm.Main(m)) }

func createPrimary(t transport.TPM) error {
	_, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
	}.Execute(t)
	return err
}

// TestTPMDeviceFlushAll: objects a client left loaded fill a TPM without
// resource manager (swtpm holds three); FlushAll empties it.
func TestTPMDeviceFlushAll(t *testing.T) {
	tp := swtpm.Shared(t).Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := tpmdev.New(tp.Socket)
	var err error
	for i := 0; i < 10 && err == nil; i++ {
		err = d.Do(ctx, createPrimary) // never flushed
	}
	if !errors.Is(err, tpm2.TPMRCObjectMemory) {
		t.Fatalf("after leaking objects: %v, want TPM_RC_OBJECT_MEMORY", err)
	}
	if err := d.Do(ctx, func(t transport.TPM) error {
		if err := tpmdev.FlushAll(t); err != nil {
			return err
		}
		return createPrimary(t)
	}); err != nil {
		t.Fatalf("after FlushAll: %v", err)
	}
}

// TestTPMDeviceFirstUseFlushes: the first operation of a process on a TPM
// without resource manager starts from an empty TPM, whatever a previous
// process left (here: a client on the raw socket).
func TestTPMDeviceFirstUseFlushes(t *testing.T) {
	tp := swtpm.Shared(t).Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Another "process": a second path to the same socket (a symlink) is
	// a path this process has not used.
	other := filepath.Join(t.TempDir(), "tpm")
	if err := os.Symlink(tp.Socket, other); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if err := tpmdev.New(tp.Socket).Do(ctx, createPrimary); err != nil {
			t.Fatal(err)
		}
	}
	if err := tpmdev.New(other).Do(ctx, createPrimary); err != nil {
		t.Fatalf("first use of a TPM full of stale objects: %v", err)
	}
}

// TestTPMDeviceBadPath: a missing path or a regular file is an error
// naming it.
func TestTPMDeviceBadPath(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(t.TempDir(), "missing"), f} {
		err := tpmdev.New(p).Do(context.Background(), func(transport.TPM) error { return nil })
		if err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: %v", p, err)
		}
	}
	if got := tpmdev.New("").Path(); got != tpmdev.DefaultPath {
		t.Errorf("default path %q", got)
	}
}
