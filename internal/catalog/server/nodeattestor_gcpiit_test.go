//go:build !sigil_omit_gcp_iit

package server_test

import (
	"os"
	"strings"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/testutil/cloudfake"
)

// TestGCPIITExampleConf: the commented NodeAttestor "gcp_iit" of
// conf/server/server.conf parses when uncommented, with each of its
// optional settings (the service account file: a real key file in its
// place).
func TestGCPIITExampleConf(t *testing.T) {
	src, err := os.ReadFile("../../../conf/server/server.conf")
	if err != nil {
		t.Fatal(err)
	}
	conf := uncommentBlock(t, string(src), `    # NodeAttestor "gcp_iit" {`)
	const example = `"/etc/sigil/gcp-attestor.json"`
	if !strings.Contains(conf, example) {
		t.Fatalf("no service_account_file = %s in the example", example)
	}
	sa := cloudfake.NewGCP(t).WriteServiceAccountFile(t, t.TempDir())
	p, err := parse(t, strings.Replace(conf, example, `"`+sa+`"`, 1))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(p.Names(), ", "), `NodeAttestor "gcp_iit"`) {
		t.Fatalf("plugins %s", strings.Join(p.Names(), ", "))
	}
}
