//go:build !sigil_omit_tpm

package server_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	servercatalog "github.com/sigil-spiffe/sigil/internal/catalog/server"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
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

	// The directories it names are checked by the parse (so by validate),
	// with their line.
	_, err = parse(t, confWith("plugins {\n  NodeAttestor \"tpm\" {\n    plugin_data {\n      ek_hash_path = \"/nonexistent/hashes\"\n      ek_ca_path = \"/nonexistent/cas\"\n    }\n  }\n}\n"))
	wantErr(t, err, `server.conf:17: plugin NodeAttestor "tpm": ek_hash_path: stat /nonexistent/hashes: no such file or directory`,
		`server.conf:18: plugin NodeAttestor "tpm": ek_ca_path: stat /nonexistent/cas: no such file or directory`)
}

// tpmDirs makes, under the working directory, the EK CA directory (with a
// CA certificate) and the EK hash directory at the paths given.
func tpmDirs(t *testing.T, caDir, hashDir string) {
	t.Helper()
	for _, d := range []string{caDir, hashDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	testca.WriteCertsPEM(t, filepath.Join(caDir, "manufacturer.pem"), testca.New(t).Cert)
}

// TestTPMExampleConf: the commented NodeAttestor "tpm" of
// conf/server/server.conf parses when uncommented, and so does each of its
// optional settings.
func TestTPMExampleConf(t *testing.T) {
	src, err := os.ReadFile("../../../conf/server/server.conf")
	if err != nil {
		t.Fatal(err)
	}
	// Its directories, relative to the working directory as in the file.
	t.Chdir(t.TempDir())
	tpmDirs(t, "conf/server/tpm-ek-cas", "conf/server/tpm-ek-hashes")
	lines := strings.Split(string(src), "\n")
	start := slices.Index(lines, `    # NodeAttestor "tpm" {`)
	if start < 0 {
		t.Fatal(`no commented NodeAttestor "tpm" in conf/server/server.conf`)
	}
	for i := start; ; i++ {
		l := lines[i]
		if !strings.HasPrefix(l, "    #") {
			t.Fatalf("the commented block ends without its closing brace at line %d", i+1)
		}
		// Every setting: one level of comment off, and a second one for
		// the optional settings (comment lines stay comments: "# # text").
		l = "    " + strings.TrimPrefix(strings.TrimPrefix(l, "    #"), " ")
		if strings.HasPrefix(strings.TrimSpace(l), "# ") && strings.Contains(l, " = ") {
			l = strings.Replace(l, "# ", "", 1)
		}
		lines[i] = l
		if l == "    }" {
			break
		}
	}
	p, err := parse(t, strings.Join(lines, "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(p.Names(), ", "), `NodeAttestor "tpm"`) {
		t.Fatalf("plugins %s", strings.Join(p.Names(), ", "))
	}
}
