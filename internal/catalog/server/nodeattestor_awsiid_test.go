//go:build !sigil_omit_aws_iid

package server_test

import (
	"os"
	"strings"
	"testing"
)

// TestAWSIIDExampleConf: the commented NodeAttestor "aws_iid" of
// conf/server/server.conf parses when uncommented, with each of its
// optional settings.
func TestAWSIIDExampleConf(t *testing.T) {
	src, err := os.ReadFile("../../../conf/server/server.conf")
	if err != nil {
		t.Fatal(err)
	}
	p, err := parse(t, uncommentBlock(t, string(src), `    # NodeAttestor "aws_iid" {`))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(p.Names(), ", "), `NodeAttestor "aws_iid"`) {
		t.Fatalf("plugins %s", strings.Join(p.Names(), ", "))
	}
}
