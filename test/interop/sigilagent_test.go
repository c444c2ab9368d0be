package interop

import (
	"context"
	"errors"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// sigilAgent is a sigil-agent attested with a join token aliased to
// /node, with its health listener on.
type sigilAgent struct {
	*testutil.Agent
	id         spiffeid.ID // the join_token agent ID
	healthAddr string
}

func startSigilAgent(t *testing.T, srv *testutil.Server, nodeID spiffeid.ID) *sigilAgent {
	t.Helper()
	cfg := testutil.AgentFor(t, srv, nodeID.Path(), "")
	port, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg.HealthPort = port
	a := &sigilAgent{
		Agent:      testutil.StartAgent(t, cfg),
		id:         srv.Admin(t).JoinTokenAgentID(cfg.JoinToken),
		healthAddr: "127.0.0.1:" + strconv.Itoa(port),
	}
	return a
}

// ready polls the agent's ready path until it answers code with a body
// starting with prefix, and returns the body.
func (a *sigilAgent) ready(t *testing.T, code int, prefix string) string {
	t.Helper()
	return testutil.WaitHTTP(t, "http://"+a.healthAddr+"/ready", code, prefix, deadline)
}

// persisted lists what a sigil-agent keeps of its identity in data_dir.
func (a *sigilAgent) persisted() []string {
	var out []string
	for _, name := range []string{"agent_svid.json", "workload-cache.json"} {
		if _, err := os.Stat(filepath.Join(a.Config.DataDir, name)); err == nil {
			out = append(out, name)
		}
	}
	keys, _ := filepath.Glob(filepath.Join(a.Config.DataDir, "keys", "*"))
	for _, k := range keys {
		out = append(out, "keys/"+filepath.Base(k))
	}
	return out
}

// TestSigilAgent: a sigil-agent attests with a join token, gets its
// entries and serves a go-spiffe workload an X509-SVID and a JWT-SVID.
// Then the server's own CLI (spire-server agent ban/evict against SPIRE)
// bans one agent and evicts another (which holds an unused
// join token): both go to their revoked state (recognising the server's
// refusal), end the workload's stream with PermissionDenied and delete
// their persisted identity; the evicted one attests again with its unused
// token and serves again, the banned one stays revoked. Against
// spire-server this is the check that SPIRE's refusals are the ones the
// agent's classifier expects.
func TestSigilAgent(t *testing.T) {
	forEachServer(t, func(t *testing.T, srv *testutil.Server) {
		adm := srv.Admin(t)
		nodeID := srv.ID("/node")
		webID := srv.ID("/web")
		adm.CreateEntry(t, webID, nodeID, uidSelector)

		banned := startSigilAgent(t, srv, nodeID)
		evicted := startSigilAgent(t, srv, nodeID)
		for _, a := range []*sigilAgent{banned, evicted} {
			checkWorkload(t, srv, a.Agent, webID)
			a.ready(t, http.StatusOK, "connected")
		}
		// The evicted agent gets an unused join token on its command line:
		// it keeps its persisted identity and holds the token back.
		evicted.Stop(t)
		spare := adm.CreateJoinToken(t, nodeID)
		evicted.Args = []string{"-joinToken", spare}
		evicted.Start(t)
		before := testutil.RequireSVID(t, evicted.SocketAddr(), webID, deadline)
		evicted.ready(t, http.StatusOK, "connected")
		if a := findAgent(t, adm, adm.JoinTokenAgentID(spare)); a != nil {
			t.Fatal("a restarted agent with a persisted identity attested again with its spare token")
		}

		bannedStream, _ := testutil.OpenX509Stream(t, banned.Config.SocketPath, 2*deadline)
		serverCLI(t, srv, "agent", "ban", "-spiffeID", banned.id.String())
		if err := testutil.StreamEnd(bannedStream); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("the banned agent's X509-SVID stream ended with %v, want PermissionDenied", err)
		}
		if body := banned.ready(t, http.StatusServiceUnavailable, "revoked:"); !strings.Contains(body, "banned") {
			t.Errorf("/ready %s does not say banned", body)
		}
		logs := banned.Proc.WaitForLog(t, "Not attesting again", deadline)
		if !strings.Contains(logs, "reason=AGENT_BANNED") {
			t.Error("the agent log names no AGENT_BANNED refusal")
		}
		if p := banned.persisted(); len(p) != 0 {
			t.Errorf("the banned agent still persists %v", p)
		}
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		if _, err := testutil.FetchX509SVIDs(ctx, banned.SocketAddr()); status.Code(err) != codes.PermissionDenied {
			t.Errorf("a fetch from the banned agent: %v, want PermissionDenied", err)
		}

		evictedStream, _ := testutil.OpenX509Stream(t, evicted.Config.SocketPath, 2*deadline)
		serverCLI(t, srv, "agent", "evict", "-spiffeID", evicted.id.String())
		if err := testutil.StreamEnd(evictedStream); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("the evicted agent's X509-SVID stream ended with %v, want PermissionDenied", err)
		}
		evicted.Proc.WaitForLog(t, "reason=AGENT_NOT_ATTESTED", deadline)
		// It attests again with the spare token: a new agent, a new SVID.
		after := testutil.RequireSVID(t, evicted.SocketAddr(), webID, deadline)
		if after.Certificates[0].SerialNumber.Cmp(before.Certificates[0].SerialNumber) == 0 {
			t.Fatal("the re-attested agent serves the evicted agent's SVID")
		}
		evicted.ready(t, http.StatusOK, "connected")
		if findAgent(t, adm, adm.JoinTokenAgentID(spare)) == nil || findAgent(t, adm, evicted.id) != nil {
			t.Fatalf("%s does not list the re-attested agent in place of the evicted one", srv.Name())
		}
		checkWorkload(t, srv, evicted.Agent, webID)

		// The banned agent never came back.
		banned.ready(t, http.StatusServiceUnavailable, "revoked:")
		if a := findAgent(t, adm, banned.id); a == nil || !a.GetBanned() {
			t.Errorf("%s lists the banned agent as %v", srv.Name(), a)
		}
	})
}

// TestSigilAgentRefusedJoinToken: a sigil-agent with no identity whose
// join token the server refuses (unknown, or already used) exits non-zero
// with the server's message instead of retrying, against either server.
func TestSigilAgentRefusedJoinToken(t *testing.T) {
	forEachServer(t, func(t *testing.T, srv *testutil.Server) {
		used := startSigilAgent(t, srv, srv.ID("/node"))
		used.Proc.WaitForLog(t, "Node attestation succeeded", deadline)
		for name, token := range map[string]string{
			"unknown": "00000000-0000-4000-8000-000000000000",
			"used":    used.Config.JoinToken,
		} {
			t.Run(name, func(t *testing.T) {
				cfg := testutil.AgentFor(t, srv, "/node", "")
				cfg.JoinToken = token
				a := testutil.NewAgent(t, cfg)
				a.StartProcess(t)
				logs := a.Proc.WaitExit(t, deadline)
				if a.Proc.Err() == nil {
					t.Fatal("the agent exited with status 0")
				}
				if !strings.Contains(logs, "join token") {
					t.Errorf("the agent's output does not give the server's reason:\n%s", logs)
				}
				if _, err := os.Stat(filepath.Join(cfg.DataDir, "agent_svid.json")); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("the refused agent persisted an SVID: %v", err)
				}
			})
		}
	})
}
