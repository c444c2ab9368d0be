package tpm_test

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/attest/node/tpm"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// TestTPMParseConfig: plugin_data keys of both halves, the community
// plugin's spellings, and errors naming the key.
func TestTPMParseConfig(t *testing.T) {
	h := strings.Repeat("ab", 32)
	dir := t.TempDir()
	caDir, hashDir, emptyDir := filepath.Join(dir, "ca"), filepath.Join(dir, "hashes"), filepath.Join(dir, "empty")
	for _, d := range []string{caDir, hashDir, emptyDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	testca.WriteCertsPEM(t, filepath.Join(caDir, "manufacturer.pem"), testca.New(t).Cert)
	c, err := tpm.ParseServerConfig(config.NewPlugin("NodeAttestor", "tpm", map[string]any{
		"ek_ca_path": caDir, "hash_path": hashDir, "ek_hashes": []string{h},
		"pcr_selection": []int{7, 0}, "pcr_allowed": []string{"sha256:7:" + h},
	}).Data())
	if err != nil {
		t.Fatal(err)
	}
	want := tpm.ServerConfig{EKCAPath: caDir, EKHashPath: hashDir, EKHashes: []string{h}, PCRSelection: []int{7, 0}, PCRAllowed: []string{"sha256:7:" + h}}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("got %+v\nwant %+v", c, want)
	}
	for _, bad := range []struct {
		data map[string]any
		text string
	}{
		{map[string]any{}, "one of ek_ca_path, ek_hash_path or ek_hashes"},
		{map[string]any{"ek_ca_path": "/a", "ca_path": "/b"}, "ca_path and ek_ca_path name the same setting"},
		// The directories NewServer reads, as validate reports them.
		{map[string]any{"ek_ca_path": filepath.Join(dir, "missing")}, "ek_ca_path: stat " + filepath.Join(dir, "missing") + ": no such file or directory"},
		{map[string]any{"ca_path": emptyDir}, "ek_ca_path " + emptyDir + " holds no certificate"},
		{map[string]any{"ek_ca_path": filepath.Join(caDir, "manufacturer.pem")}, "is not a directory"},
		{map[string]any{"ek_hash_path": filepath.Join(dir, "missing")}, "ek_hash_path: stat " + filepath.Join(dir, "missing") + ": no such file or directory"},
		{map[string]any{"hash_path": filepath.Join(caDir, "manufacturer.pem")}, "ek_hash_path " + filepath.Join(caDir, "manufacturer.pem") + " is not a directory"},
		{map[string]any{"ek_hashes": []string{h}, "pcr_selection": []int{24}}, "PCR 24"},
		{map[string]any{"ek_hashes": []string{h}, "pcr_selection": "7"}, `"pcr_selection"`},
		{map[string]any{"ek_hashes": []string{h}, "pcr_allowed": []string{"sha256:7:" + h}}, "PCR 7 is not in pcr_selection"},
		{map[string]any{"ek_hashes": []string{h}, "unknown": "x"}, `unknown key "unknown"`},
	} {
		_, err := tpm.ParseServerConfig(config.NewPlugin("NodeAttestor", "tpm", bad.data).Data())
		if err == nil || !strings.Contains(err.Error(), bad.text) {
			t.Errorf("%v: error %v, want %q", bad.data, err, bad.text)
		}
	}
	a, err := tpm.ParseAgentConfig(config.NewPlugin("NodeAttestor", "tpm", map[string]any{"tpm_path": "/run/swtpm.sock"}).Data())
	if err != nil || a.TPMPath != "/run/swtpm.sock" {
		t.Fatalf("agent config %+v, %v", a, err)
	}
	if _, err := tpm.ParseAgentConfig(config.NewPlugin("NodeAttestor", "tpm", map[string]any{"ek_hashes": []string{h}}).Data()); err == nil {
		t.Fatal("agent accepted a server key")
	}
}
