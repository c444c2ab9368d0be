//go:build !sigil_omit_azure_msi

package server_test

import (
	"os"
	"strings"
	"testing"
)

// TestAzureMSIExampleConf: the commented NodeAttestor "azure_msi" of
// conf/server/server.conf parses when uncommented.
func TestAzureMSIExampleConf(t *testing.T) {
	src, err := os.ReadFile("../../../conf/server/server.conf")
	if err != nil {
		t.Fatal(err)
	}
	p, err := parse(t, uncommentBlock(t, string(src), `    # NodeAttestor "azure_msi" {`))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(p.Names(), ", "), `NodeAttestor "azure_msi"`) {
		t.Fatalf("plugins %s", strings.Join(p.Names(), ", "))
	}
}
