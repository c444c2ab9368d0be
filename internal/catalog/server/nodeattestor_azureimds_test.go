//go:build !sigil_omit_azure_imds

package server_test

import (
	"os"
	"strings"
	"testing"
)

// TestAzureIMDSExampleConf: the commented NodeAttestor "azure_imds" of
// conf/server/server.conf parses when uncommented.
func TestAzureIMDSExampleConf(t *testing.T) {
	src, err := os.ReadFile("../../../conf/server/server.conf")
	if err != nil {
		t.Fatal(err)
	}
	p, err := parse(t, uncommentBlock(t, string(src), `    # NodeAttestor "azure_imds" {`))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(p.Names(), ", "), `NodeAttestor "azure_imds"`) {
		t.Fatalf("plugins %s", strings.Join(p.Names(), ", "))
	}
}
