//go:build !sigil_omit_tpm

package server_test

import (
	"context"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	servercatalog "github.com/sigil-spiffe/sigil/internal/catalog/server"
)

// TestTPMNodeAttestorInCatalog: NodeAttestor "tpm" parses its plugin_data
// with file:line errors and builds; a build error names the plugin.
func TestTPMNodeAttestorInCatalog(t *testing.T) {
	h := strings.Repeat("ab", 32)
	p, err := parse(t, confWith("plugins {\n  NodeAttestor \"tpm\" {\n    plugin_data {\n      ek_hashes = [\""+h+"\"]\n      pcr_selection = [0, 7]\n    }\n  }\n}\n"))
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("example.org")
	ats, err := p.NodeAttestors(context.Background(), servercatalog.NodeAttestorDeps{TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	if ats["tpm"] == nil {
		t.Fatalf("node attestors %v", ats)
	}
	_, err = parse(t, confWith("plugins {\n  NodeAttestor \"tpm\" {\n    plugin_data {\n      pcr_selection = [24]\n    }\n  }\n}\n"))
	wantErr(t, err, `server.conf:17: plugin NodeAttestor "tpm": PCR 24`)

	p, err = parse(t, confWith("plugins {\n  NodeAttestor \"tpm\" {\n    plugin_data {\n      ek_hash_path = \"/nonexistent/hashes\"\n    }\n  }\n}\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.NodeAttestors(context.Background(), servercatalog.NodeAttestorDeps{TrustDomain: td})
	wantErr(t, err, `NodeAttestor "tpm"`, "/nonexistent/hashes")
}
