//go:build !sigil_omit_tpm

package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	agentcatalog "github.com/sigil-spiffe/sigil/internal/catalog/agent"
	"github.com/sigil-spiffe/sigil/internal/keys/tpmkey"
)

// TestTPMPluginsInCatalog: NodeAttestor "tpm" and KeyManager "tpm" parse
// their plugin_data and build (without touching the TPM); errors carry
// file:line and the plugin.
func TestTPMPluginsInCatalog(t *testing.T) {
	keysDir := filepath.Join(t.TempDir(), "keys")
	src := strings.Replace(confWith(""), `NodeAttestor "join_token" {}`, "NodeAttestor \"tpm\" {\n        plugin_data {\n            tpm_path = \"/run/swtpm.sock\"\n        }\n    }", 1)
	src = strings.Replace(src, `KeyManager "memory" {}`, "KeyManager \"tpm\" {\n        plugin_data {\n            directory = \""+keysDir+"\"\n        }\n    }", 1)
	p, err := parse(t, src)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	na, err := p.NodeAttestor().Build(ctx, agentcatalog.NodeAttestorDeps{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org")})
	if err != nil || na.Type() != "tpm" {
		t.Fatalf("NodeAttestor %v, %v", na, err)
	}
	km, err := p.KeyManager().Build(ctx, agentcatalog.KeyManagerDeps{})
	if err != nil {
		t.Fatal(err)
	}
	if m, ok := km.(*tpmkey.Manager); !ok || m.Dir() != keysDir {
		t.Fatalf("KeyManager %#v, want tpm in %s", km, keysDir)
	}

	_, err = parse(t, strings.Replace(confWith(""), `KeyManager "memory" {}`, "KeyManager \"tpm\" {}", 1))
	wantErr(t, err, `agent.conf:9: plugin KeyManager "tpm": directory must be configured`)
	_, err = parse(t, strings.Replace(confWith(""), `NodeAttestor "join_token" {}`, "NodeAttestor \"tpm\" {\n        plugin_data {\n            ek_ca_path = \"/x\"\n        }\n    }", 1))
	wantErr(t, err, `agent.conf:10: unknown key "ek_ca_path" in plugin_data of plugin NodeAttestor "tpm"`)
}

// TestTPMExampleConf: the commented NodeAttestor "tpm" and KeyManager
// "tpm" of conf/agent/agent.conf parse when uncommented in place of
// join_token and disk.
func TestTPMExampleConf(t *testing.T) {
	src, err := os.ReadFile("../../../conf/agent/agent.conf")
	if err != nil {
		t.Fatal(err)
	}
	s := uncomment(t, string(src), `NodeAttestor "tpm" {`, `NodeAttestor "join_token" {`)
	s = uncomment(t, s, `KeyManager "tpm" {`, `KeyManager "disk" {`)
	p, err := parse(t, s)
	if err != nil {
		t.Fatalf("%v\n%s", err, s)
	}
	if got := strings.Join(p.Names(), ", "); !strings.Contains(got, `NodeAttestor "tpm"`) || !strings.Contains(got, `KeyManager "tpm"`) {
		t.Fatalf("plugins %s", got)
	}
}
