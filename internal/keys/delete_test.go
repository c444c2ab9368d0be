package keys

import (
	"context"
	"errors"
	"os"
	"testing"
)

// TestDeleteKey: a deleted key is gone (from disk too, for a new manager
// on the same directory); deleting an unknown key is not an error.
func TestDeleteKey(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	disk, err := NewDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]interface {
		Manager
		DeleteKey(context.Context, string) error
	}{"memory": NewMemory(), "disk": disk} {
		t.Run(name, func(t *testing.T) {
			if _, err := m.GenerateKey(ctx, "gone", ECP256); err != nil {
				t.Fatal(err)
			}
			if _, err := m.GenerateKey(ctx, "kept", ECP256); err != nil {
				t.Fatal(err)
			}
			if err := m.DeleteKey(ctx, "gone"); err != nil {
				t.Fatalf("DeleteKey: %v", err)
			}
			if _, err := m.GetKey(ctx, "gone"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("GetKey after DeleteKey = %v, want ErrNotFound", err)
			}
			if _, err := m.GetKey(ctx, "kept"); err != nil {
				t.Fatalf("the other key went too: %v", err)
			}
			if err := m.DeleteKey(ctx, "gone"); err != nil {
				t.Fatalf("DeleteKey of a missing key: %v", err)
			}
		})
	}
	again, err := NewDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := again.GetKey(ctx, "gone"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted key found on disk: %v", err)
	}
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(des) != 1 {
		t.Fatalf("key directory holds %d files, want 1 (kept)", len(des))
	}
}
