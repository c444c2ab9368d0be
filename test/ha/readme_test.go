package ha

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/pgtest"
)

// readmeHABlocks returns the hcl blocks of the README's "High
// availability" section: the servers' server.conf and the agent's
// agent.conf.
func readmeHABlocks(t *testing.T) (server, agent string) {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "\n### High availability: several servers\n")
	if i < 0 {
		t.Fatal("README.md has no High availability section")
	}
	s = s[i+1:]
	if j := strings.Index(s[4:], "\n### "); j >= 0 {
		s = s[:j+4]
	}
	var blocks []string
	for {
		start := strings.Index(s, "```hcl\n")
		if start < 0 {
			break
		}
		s = s[start+len("```hcl\n"):]
		end := strings.Index(s, "\n```")
		blocks = append(blocks, s[:end+1])
		s = s[end+4:]
	}
	if len(blocks) != 2 {
		t.Fatalf("the High availability section has %d hcl blocks, want 2 (server.conf, agent.conf)", len(blocks))
	}
	return blocks[0], blocks[1]
}

// setValue replaces the value of the one key = value line of hcl named
// key (a string, number or list) with value, keeping its comment.
func setValue(t *testing.T, hcl, key, value string) string {
	t.Helper()
	re := regexp.MustCompile(`(?m)^(\s*` + regexp.QuoteMeta(key) + `\s*=\s*)("[^"]*"|[0-9]+|\[[^\]]*\])`)
	if n := len(re.FindAllStringIndex(hcl, -1)); n != 1 {
		t.Fatalf("the README block has %d %q lines, want 1:\n%s", n, key, hcl)
	}
	return re.ReplaceAllString(hcl, "${1}"+strings.ReplaceAll(value, "$", "$$"))
}

// TestREADMEHighAvailability runs the README's "High availability" blocks
// as pasted but for what names this host (the database, directories,
// ports, sockets, addresses): its server.conf on two sigil-server
// processes sharing one PostgreSQL database, its agent.conf on a
// sigil-agent knowing both. The workload gets its SVID, and keeps being
// served, and gets an entry created through the other server, once the
// first server is killed.
func TestREADMEHighAvailability(t *testing.T) {
	serverHCL, agentHCL := readmeHABlocks(t)
	conn := pgtest.NewDatabase(t)
	var servers []*testutil.Server
	for range 2 {
		s := testutil.NewServer(t, testutil.ServerConfig{})
		hcl := setValue(t, serverHCL, "bind_port", strconv.Quote(strconv.Itoa(s.Config.BindPort)))
		hcl = setValue(t, hcl, "data_dir", strconv.Quote(s.Config.DataDir))
		hcl = setValue(t, hcl, "connection_string", strconv.Quote(conn))
		hcl = setValue(t, hcl, "keys_path", strconv.Quote(filepath.Join(s.Config.DataDir, "keys")))
		// The default socket (/tmp/spire-server/private/api.sock) is one
		// per host; these two servers share one.
		hcl = strings.Replace(hcl, "server {\n", fmt.Sprintf("server {\n    socket_path = %q\n", s.Config.SocketPath), 1)
		s.WriteConfig(t, hcl)
		s.Start(t)
		servers = append(servers, s)
	}
	if n := strings.Count(string(servers[1].Admin(t).BundlePEM(t)), "BEGIN CERTIFICATE"); n != 2 {
		t.Fatalf("the bundle holds %d CAs, want both servers'", n)
	}

	dir := testutil.ShortTempDir(t)
	bundle := filepath.Join(dir, "bootstrap.crt")
	if err := os.WriteFile(bundle, servers[0].Admin(t).BundlePEM(t), 0o600); err != nil {
		t.Fatal(err)
	}
	a := testutil.NewAgent(t, testutil.AgentConfig{DataDir: dir, TrustBundlePath: bundle,
		ServerAddresses: []string{servers[0].Addr(), servers[1].Addr()}})
	hcl := setValue(t, agentHCL, "server_addresses", fmt.Sprintf("[%q, %q]", servers[0].Addr(), servers[1].Addr()))
	hcl = setValue(t, hcl, "trust_bundle_path", strconv.Quote(bundle))
	hcl = setValue(t, hcl, "data_dir", strconv.Quote(dir))
	hcl = setValue(t, hcl, "directory", strconv.Quote(dir))
	hcl = setValue(t, hcl, "socket_path", strconv.Quote(a.Config.SocketPath))
	a.HCL = hcl
	agentID := servers[0].ID("/agent/readme")
	a.Args = []string{"-joinToken", servers[1].Admin(t).CreateJoinToken(t, agentID)}
	a.Start(t)
	first := servers[0].ID("/readme/first")
	servers[0].Admin(t).CreateEntry(t, first, agentID, uidSelector)
	testutil.RequireSVID(t, a.SocketAddr(), first, deadline)

	servers[0].Proc.Kill()
	second := servers[0].ID("/readme/second")
	servers[1].Admin(t).CreateEntry(t, second, agentID, uidSelector)
	testutil.RequireSVID(t, a.SocketAddr(), second, deadline)
	testutil.RequireSVID(t, a.SocketAddr(), first, deadline)
}
