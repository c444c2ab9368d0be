package tpm_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/attest/node/tpm"
	"github.com/sigil-spiffe/sigil/internal/config"
)

// TestTPMParseConfig: plugin_data keys of both halves, the community
// plugin's spellings, and errors naming the key.
func TestTPMParseConfig(t *testing.T) {
	h := strings.Repeat("ab", 32)
	c, err := tpm.ParseServerConfig(config.NewPlugin("NodeAttestor", "tpm", map[string]any{
		"ek_ca_path": "/ca", "hash_path": "/hashes", "ek_hashes": []string{h},
		"pcr_selection": []int{7, 0}, "pcr_allowed": []string{"sha256:7:" + h},
	}).Data())
	if err != nil {
		t.Fatal(err)
	}
	want := tpm.ServerConfig{EKCAPath: "/ca", EKHashPath: "/hashes", EKHashes: []string{h}, PCRSelection: []int{7, 0}, PCRAllowed: []string{"sha256:7:" + h}}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("got %+v\nwant %+v", c, want)
	}
	for _, bad := range []struct {
		data map[string]any
		text string
	}{
		{map[string]any{}, "one of ek_ca_path, ek_hash_path or ek_hashes"},
		{map[string]any{"ek_ca_path": "/a", "ca_path": "/b"}, "ca_path and ek_ca_path name the same setting"},
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
