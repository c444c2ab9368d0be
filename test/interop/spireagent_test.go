package interop

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// TestSPIREAgent: a real spire-agent attests with a join token, syncs its
// entries and serves a go-spiffe workload an X509-SVID and a JWT-SVID for
// an entry registered on the server. When the server's CLI bans one agent
// and evicts another (sigil-server agent ban/evict against Sigil), each spire-agent drops its identity (its persisted SVID
// is deleted) and exits, as it does against spire-server: SPIRE's agent
// shuts down when banned, and when evicted it tries to re-attest, which a
// join_token agent cannot.
func TestSPIREAgent(t *testing.T) {
	forEachServer(t, func(t *testing.T, srv *testutil.Server) {
		adm := srv.Admin(t)
		nodeID := srv.ID("/node")
		webID := srv.ID("/web")
		adm.CreateEntry(t, webID, nodeID, uidSelector)

		start := func() (*testutil.Agent, spiffeid.ID) {
			cfg := testutil.AgentFor(t, srv, nodeID.Path(), "")
			a := testutil.StartSPIREAgent(t, cfg)
			return a, adm.JoinTokenAgentID(cfg.JoinToken)
		}
		banned, bannedID := start()
		evicted, evictedID := start()
		for _, a := range []*testutil.Agent{banned, evicted} {
			if !hasPersistedSVID(t, a) {
				t.Fatalf("spire-agent persisted no SVID after attesting to %s", srv.Name())
			}
			checkWorkload(t, srv, a, webID)
		}
		if n := len(entriesWithParent(t, adm, evictedID)); n != 1 {
			t.Fatalf("%d entries have the parent %s, want its join token's alias", n, evictedID)
		}

		serverCLI(t, srv, "agent", "ban", "-spiffeID", bannedID.String())
		logs := banned.Proc.WaitExit(t, deadline)
		if banned.Proc.Err() == nil {
			t.Error("the banned spire-agent exited with status 0")
		}
		if !strings.Contains(logs, "Agent is banned: removing SVID and shutting down") {
			t.Error("the banned spire-agent did not log that it is banned")
		}
		if hasPersistedSVID(t, banned) {
			t.Error("the banned spire-agent kept its SVID")
		}
		if a := findAgent(t, adm, bannedID); a == nil || !a.GetBanned() {
			t.Errorf("%s lists the banned agent as %v", srv.Name(), a)
		}

		serverCLI(t, srv, "agent", "evict", "-spiffeID", evictedID.String())
		logs = evicted.Proc.WaitExit(t, deadline)
		if evicted.Proc.Err() == nil {
			t.Error("the evicted spire-agent exited with status 0")
		}
		if !strings.Contains(logs, "Agent needs to re-attest") {
			t.Error("the evicted spire-agent did not log that it must re-attest")
		}
		if hasPersistedSVID(t, evicted) {
			t.Error("the evicted spire-agent kept its SVID")
		}
		if a := findAgent(t, adm, evictedID); a != nil {
			t.Errorf("%s still lists the evicted agent", srv.Name())
		}
		// Evicting a join_token agent deletes the alias entry its token
		// created (SPIRE since 1.15.2); other entries stay.
		if es := entriesWithParent(t, adm, evictedID); len(es) != 0 {
			t.Errorf("after the eviction %s keeps %d entries with the evicted agent as parent", srv.Name(), len(es))
		}
		if es := entriesWithParent(t, adm, bannedID); len(es) != 1 {
			t.Errorf("after the ban %s keeps %d alias entries of the banned agent, want 1", srv.Name(), len(es))
		}
	})
}

// hasPersistedSVID reports whether a spire-agent's data_dir holds its
// SVID (agent-data.json's "svid", which SPIRE empties when it drops it).
func hasPersistedSVID(t *testing.T, a *testutil.Agent) bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(a.Config.DataDir, "agent-data.json"))
	if err != nil {
		t.Fatalf("spire-agent state: %v", err)
	}
	var data struct {
		SVID json.RawMessage `json:"svid"`
	}
	if err := json.Unmarshal(b, &data); err != nil {
		t.Fatalf("spire-agent state: %v", err)
	}
	return len(data.SVID) > 0 && string(data.SVID) != "null"
}
