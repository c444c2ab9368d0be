package keys

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func checkSigns(t *testing.T, k crypto.Signer) {
	t.Helper()
	d := sha256.Sum256([]byte("hello"))
	if _, err := k.Sign(rand.Reader, d[:], crypto.SHA256); err != nil {
		t.Fatalf("sign: %v", err)
	}
}

func equalPub(a, b crypto.Signer) bool {
	return a.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(b.Public())
}

func testManager(t *testing.T, m Manager) {
	ctx := context.Background()
	if _, err := m.GetKey(ctx, "missing"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetKey(missing) = %v, want ErrNotFound", err)
	}
	for _, typ := range []Type{ECP256, ECP384, RSA2048} {
		k, err := m.GenerateKey(ctx, "k-"+string(typ), typ)
		if err != nil {
			t.Fatalf("GenerateKey %s: %v", typ, err)
		}
		got, err := TypeOf(k.Public())
		if err != nil || got != typ {
			t.Fatalf("TypeOf = %q, %v; want %q", got, err, typ)
		}
		checkSigns(t, k)
		k2, err := m.GetKey(ctx, "k-"+string(typ))
		if err != nil || !equalPub(k, k2) {
			t.Fatalf("GetKey %s: %v (same=%v)", typ, err, err == nil && equalPub(k, k2))
		}
	}
	// GenerateKey replaces.
	a, _ := m.GenerateKey(ctx, "r", ECP256)
	b, _ := m.GenerateKey(ctx, "r", ECP256)
	if equalPub(a, b) {
		t.Fatal("two generated keys are equal")
	}
	c, err := m.GetKey(ctx, "r")
	if err != nil || !equalPub(b, c) {
		t.Fatalf("GetKey after replace: %v", err)
	}
	if _, err := m.GenerateKey(ctx, "x", "dsa-1024"); err == nil {
		t.Fatal("GenerateKey accepted an unknown type")
	}
	if _, err := m.GenerateKey(ctx, "", ECP256); err == nil {
		t.Fatal("GenerateKey accepted an empty ID")
	}
}

func TestMemory(t *testing.T) { testManager(t, NewMemory()) }

func TestDisk(t *testing.T) {
	d, err := NewDisk(filepath.Join(t.TempDir(), "keys"))
	if err != nil {
		t.Fatal(err)
	}
	testManager(t, d)
}

func TestDiskPermissionsAndRestart(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "keys")
	// A pre-existing, too-open directory gets tightened.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	d, err := NewDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %o, want 700", fi.Mode().Perm())
	}
	ids := []string{"x509-CA-A", "../../etc/passwd", "a/b", ".hidden", "a_b", "a%5fb", "ünï"}
	gen := map[string]crypto.Signer{}
	for _, id := range ids {
		k, err := d.GenerateKey(ctx, id, ECP256)
		if err != nil {
			t.Fatalf("GenerateKey(%q): %v", id, err)
		}
		gen[id] = k
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(ids) {
		t.Fatalf("dir has %d entries, want %d (one file per ID, no temp files left)", len(entries), len(ids))
	}
	for _, e := range entries {
		name := e.Name()
		if name[0] == '.' || filepath.Base(name) != name || filepath.Ext(name) != ".pem" {
			t.Errorf("unsafe file name %q", name)
		}
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want regular 0600", name, fi.Mode())
		}
	}
	// Nothing escaped the directory.
	if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "etc")); err == nil {
		t.Fatal("key ID escaped the key directory")
	}

	// Restart: a new manager on the same directory returns the same keys.
	d2, err := NewDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		k, err := d2.GetKey(ctx, id)
		if err != nil {
			t.Fatalf("after restart GetKey(%q): %v", id, err)
		}
		if !equalPub(k, gen[id]) {
			t.Fatalf("after restart key %q differs", id)
		}
		checkSigns(t, k)
	}
	if _, err := d2.GetKey(ctx, "never"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetKey(never) after restart = %v", err)
	}
}

func TestDiskCorruptFile(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d, err := NewDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	name, err := fileName("bad")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = d.GetKey(ctx, "bad")
	if err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("GetKey(corrupt) = %v, want a parse error", err)
	}
}

func TestFileNameInjective(t *testing.T) {
	seen := map[string]string{}
	for _, id := range []string{"a_b", "a/b", "a.b", "a-b", "a_2fb", ".a", "_2ea", "A", "a"} {
		n, err := fileName(id)
		if err != nil {
			t.Fatal(err)
		}
		if prev, ok := seen[n]; ok {
			t.Fatalf("IDs %q and %q map to the same file %q", prev, id, n)
		}
		seen[n] = id
	}
}
