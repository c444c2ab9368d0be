package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// reattestStack is a real sigil-server with NodeAttestor "x509pop" and a
// real sigil-agent on one device certificate, serving this process /web
// through an alias entry on the device's common name.
type reattestStack struct {
	srv     *testutil.Server
	agent   *testutil.Agent
	agentID spiffeid.ID
	webID   spiffeid.ID
}

func newReattestStack(t *testing.T, agentTTL time.Duration) *reattestStack {
	t.Helper()
	ca := testutil.NewDeviceCA(t, testutil.ShortTempDir(t))
	plugin := ca.ServerPlugin()
	plugin.Data["agent_path_template"] = "/x509pop/{{ .Subject.CommonName }}"
	srv := testutil.StartServer(t, testutil.ServerConfig{AgentTTL: agentTTL, Plugins: []testutil.Plugin{plugin}})
	na, _ := ca.Device(t, testutil.ShortTempDir(t), "device-1")
	alias := srv.ID("/devices/device-1")
	srv.Admin(t).CreateEntry(t, alias, srv.ID("/spire/server"), "x509pop:subject:cn:device-1")
	s := &reattestStack{srv: srv, agentID: srv.ID("/spire/agent/x509pop/device-1"), webID: srv.ID("/web")}
	srv.Admin(t).CreateEntry(t, s.webID, alias, uidSelector)
	s.agent = testutil.StartAgent(t, testutil.AgentWith(t, srv, "", na))
	testutil.RequireSVID(t, s.agent.SocketAddr(), s.webID, deadline)
	return s
}

func (s *reattestStack) listed(t *testing.T) bool {
	t.Helper()
	for _, a := range s.srv.Admin(t).ListAgents(t) {
		if testutil.IDString(a.GetId()) == s.agentID.String() {
			return true
		}
	}
	return false
}

// TestEvictedX509PoPAgentAttestsAgain: `agent evict` of an agent whose
// attestor can repeat its proof: the agent drops its identity, attests
// again by itself (no restart, no new credential), as the same agent ID,
// and its workload gets an SVID again.
func TestEvictedX509PoPAgentAttestsAgain(t *testing.T) {
	s := newReattestStack(t, 0)
	if !s.listed(t) {
		t.Fatalf("the server does not list %s", s.agentID)
	}
	s.srv.Admin(t).DeleteAgent(t, s.agentID)
	s.agent.Proc.WaitForLog(t, "The server refused this agent", deadline)
	s.agent.Proc.WaitForLog(t, "Attesting again after the server refused the agent", deadline)
	testutil.RequireSVID(t, s.agent.SocketAddr(), s.webID, deadline)
	if err := testutil.Poll(deadline, 50*time.Millisecond, func() (bool, error) { return s.listed(t), nil }); err != nil {
		t.Fatalf("the server never listed the re-attested agent %s again", s.agentID)
	}
}

// TestMustReattestAfterUpgrade: an agent whose agent_svid.json predates
// the reattestable flag (an agent of an earlier version, attested with
// x509pop) renews with RenewAgent; the server answers AGENT_MUST_REATTEST
// and the agent attests again instead, keeping its identity throughout,
// and records the flag.
func TestMustReattestAfterUpgrade(t *testing.T) {
	s := newReattestStack(t, 10*time.Second)
	s.agent.Stop(t)
	state := filepath.Join(s.agent.Config.DataDir, "agent_svid.json")
	data, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	if st["reattestable"] != true {
		t.Fatalf("agent_svid.json of an x509pop agent does not record reattestable: %s", data)
	}
	delete(st, "reattestable")
	if data, err = json.Marshal(st); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(state, data, 0o600); err != nil {
		t.Fatal(err)
	}

	s.agent.Start(t)
	// A few agent SVID half-lives (10 s TTL) on a loaded machine.
	s.agent.Proc.WaitForLog(t, "The server requires re-attestation instead of renewal", 90*time.Second)
	s.agent.Proc.WaitForLog(t, "Re-attested the node", deadline)
	testutil.RequireSVID(t, s.agent.SocketAddr(), s.webID, deadline)
	if strings.Contains(s.agent.Proc.Logs(), "The server refused this agent") {
		t.Fatal("AGENT_MUST_REATTEST revoked the agent")
	}
	if err := testutil.Poll(deadline, 50*time.Millisecond, func() (bool, error) {
		data, err := os.ReadFile(state)
		return err == nil && strings.Contains(string(data), `"reattestable":true`), nil
	}); err != nil {
		t.Fatal("the re-attested SVID was persisted without its reattestable flag")
	}
}
