package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/agent/fsdelivery"
	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// revokeStack is a server and an agent attested with join token t1 (as
// /agent/edge-1), with the health listener and a filesystem delivery of
// /fs, serving this process /web.
type revokeStack struct {
	srv        *testutil.Server
	agent      *testutil.Agent
	agentID    spiffeid.ID // the join_token agent ID of t1
	webID      spiffeid.ID
	fsDir      string
	healthAddr string
}

func newRevokeStack(t *testing.T) *revokeStack {
	t.Helper()
	srv := testutil.StartServer(t, testutil.ServerConfig{})
	cfg := testutil.AgentFor(t, srv, "/agent/edge-1", "")
	port, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg.HealthPort = port
	s := &revokeStack{
		srv:        srv,
		agentID:    srv.Admin(t).JoinTokenAgentID(cfg.JoinToken),
		fsDir:      filepath.Join(cfg.DataDir, "fs"),
		healthAddr: "127.0.0.1:" + strconv.Itoa(port),
	}
	cfg.FilesystemDelivery = []testutil.FilesystemDelivery{{Name: "fs", SPIFFEID: srv.ID("/fs").String(), Directory: s.fsDir}}
	edge := srv.ID("/agent/edge-1")
	s.webID = srv.ID("/web")
	srv.Admin(t).CreateEntry(t, s.webID, edge, uidSelector)
	srv.Admin(t).CreateEntry(t, srv.ID("/fs"), edge, "unix:uid:424242")
	s.agent = testutil.StartAgent(t, cfg)
	testutil.RequireSVID(t, s.agent.SocketAddr(), s.webID, deadline)
	s.waitFile(t, fsdelivery.SVIDFile, true)
	return s
}

// restartWithSpareToken restarts the agent with a new, unused join token
// (for the same /agent/edge-1 alias) on its command line: the agent keeps
// its persisted SVID and holds the token back. It returns the token's
// agent ID.
func (s *revokeStack) restartWithSpareToken(t *testing.T) spiffeid.ID {
	t.Helper()
	s.agent.Stop(t)
	token := s.srv.Admin(t).CreateJoinToken(t, s.srv.ID("/agent/edge-1"))
	s.agent.Args = []string{"-joinToken", token}
	s.agent.Start(t)
	testutil.RequireSVID(t, s.agent.SocketAddr(), s.webID, deadline)
	s.waitReady(t, http.StatusOK, "connected")
	spare := s.srv.Admin(t).JoinTokenAgentID(token)
	if ids := s.agentIDs(t); ids[spare] || !ids[s.agentID] {
		t.Fatalf("after a restart with a spare token the server lists %v, want only %s", ids, s.agentID)
	}
	return spare
}

// get returns the status and body of a health listener path.
func (s *revokeStack) get(path string) (int, string, error) {
	resp, err := http.Get("http://" + s.healthAddr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// waitReady polls the ready path until it answers code with a body
// starting with prefix, and returns the body.
func (s *revokeStack) waitReady(t *testing.T, code int, prefix string) string {
	t.Helper()
	var last string
	err := testutil.Poll(deadline, 20*time.Millisecond, func() (bool, error) {
		c, body, err := s.get("/ready")
		last = fmt.Sprintf("%d %q (%v)", c, body, err)
		return err == nil && c == code && strings.HasPrefix(body, prefix), nil
	})
	if err != nil {
		t.Fatalf("/ready never answered %d %s...: last %s", code, prefix, last)
	}
	return last
}

// waitFile waits until the delivered file exists (or is gone).
func (s *revokeStack) waitFile(t *testing.T, name string, present bool) {
	t.Helper()
	err := testutil.Poll(deadline, 20*time.Millisecond, func() (bool, error) {
		_, err := os.Stat(filepath.Join(s.fsDir, name))
		return (err == nil) == present, nil
	})
	if err != nil {
		t.Fatalf("filesystem delivery: %s present=%v never held", name, !present)
	}
}

func (s *revokeStack) agentIDs(t *testing.T) map[spiffeid.ID]bool {
	t.Helper()
	out := map[spiffeid.ID]bool{}
	for _, a := range s.srv.Admin(t).ListAgents(t) {
		out[spiffeid.RequireFromString(testutil.IDString(a.GetId()))] = true
	}
	return out
}

// persisted lists what the agent keeps in its data dir: its SVID, its
// workload cache, its SVID keys.
func (s *revokeStack) persisted(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, name := range []string{"agent_svid.json", "workload-cache.json"} {
		if _, err := os.Stat(filepath.Join(s.agent.Config.DataDir, name)); err == nil {
			out = append(out, name)
		}
	}
	keys, _ := filepath.Glob(filepath.Join(s.agent.Config.DataDir, "keys", "agent-svid-*"))
	for _, k := range keys {
		out = append(out, "keys/"+filepath.Base(k))
	}
	return out
}

// TestBanRevokesRunningAgent: banning a running agent stops it serving
// every identity within seconds: an open workload stream ends with
// PermissionDenied, new calls fail, delivered files are removed, the
// persisted agent SVID, keys and cache are deleted, /ready answers 503
// revoked, the metric says revoked, and an ERROR line gives the reason. A
// banned agent does not attest again, not even with an unused join token.
func TestBanRevokesRunningAgent(t *testing.T) {
	s := newRevokeStack(t)
	spareID := s.restartWithSpareToken(t)
	if got := s.persisted(t); len(got) != 3 {
		t.Fatalf("before the ban the agent persists %v, want its SVID, key and cache", got)
	}
	stream, _ := testutil.OpenX509Stream(t, s.agent.Config.SocketPath, 2*deadline)

	s.srv.Admin(t).BanAgent(t, s.agentID)

	if err := testutil.StreamEnd(stream); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("open X509-SVID stream ended with %v, want PermissionDenied", err)
	}
	body := s.waitReady(t, http.StatusServiceUnavailable, "revoked:")
	if !strings.Contains(body, "banned") {
		t.Errorf("/ready %s does not say banned", body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	if _, err := testutil.FetchX509SVIDs(ctx, s.agent.SocketAddr()); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a new fetch after the ban: %v, want PermissionDenied", err)
	}
	s.waitFile(t, fsdelivery.SVIDFile, false)
	s.waitFile(t, fsdelivery.KeyFile, false)
	s.waitFile(t, fsdelivery.CurrentLink, false)
	logs := s.agent.Proc.WaitForLog(t, "Not attesting again", deadline)
	if !strings.Contains(logs, `level=ERROR msg="The server refused this agent`) || !strings.Contains(logs, "reason=AGENT_BANNED") {
		t.Error("no ERROR line with reason AGENT_BANNED in the agent log")
	}
	if got := s.persisted(t); len(got) != 0 {
		t.Errorf("the banned agent still persists %v", got)
	}
	if _, body, err := s.get("/metrics"); err != nil || !strings.Contains(body, `sigil_agent_state{state="revoked"} 1`) {
		t.Errorf("metrics do not say revoked (%v): %s", err, body)
	}
	if ids := s.agentIDs(t); ids[spareID] {
		t.Error("the banned agent attested again with its spare join token")
	}
	s.waitReady(t, http.StatusServiceUnavailable, "revoked:")
}

// TestEvictedAgentAttestsAgain: evicting (deleting) a running agent that
// holds an unused join token revokes it and it attests again by itself:
// the workload gets a new SVID, the server lists the new agent, delivered
// files come back and /ready is connected.
func TestEvictedAgentAttestsAgain(t *testing.T) {
	s := newRevokeStack(t)
	spareID := s.restartWithSpareToken(t)
	before := testutil.RequireSVID(t, s.agent.SocketAddr(), s.webID, deadline)
	stream, _ := testutil.OpenX509Stream(t, s.agent.Config.SocketPath, 2*deadline)

	s.srv.Admin(t).DeleteAgent(t, s.agentID)

	if err := testutil.StreamEnd(stream); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("open X509-SVID stream ended with %v, want PermissionDenied", err)
	}
	s.agent.Proc.WaitForLog(t, "Node attestation succeeded", deadline)
	after := testutil.RequireSVID(t, s.agent.SocketAddr(), s.webID, deadline)
	if after.Certificates[0].SerialNumber.Cmp(before.Certificates[0].SerialNumber) == 0 {
		t.Fatal("the re-attested agent serves the revoked agent's SVID")
	}
	s.waitReady(t, http.StatusOK, "connected")
	ids := s.agentIDs(t)
	if !ids[spareID] || ids[s.agentID] {
		t.Fatalf("server lists %v, want the new agent %s only", ids, spareID)
	}
	s.waitFile(t, fsdelivery.SVIDFile, true)
	if !strings.Contains(s.agent.Proc.Logs(), "reason=AGENT_NOT_ATTESTED") {
		t.Error("no revocation line with reason AGENT_NOT_ATTESTED in the agent log")
	}
}

// TestRefusedJoinTokenAtFirstStart: an agent with no persisted identity
// whose join token the server refuses exits non-zero with the server's
// message instead of retrying forever.
func TestRefusedJoinTokenAtFirstStart(t *testing.T) {
	srv := testutil.StartServer(t, testutil.ServerConfig{})
	used := testutil.AgentFor(t, srv, "/agent/used", "")
	first := testutil.StartAgent(t, used)
	first.Proc.WaitForLog(t, "Node attestation succeeded", deadline)

	for name, token := range map[string]string{
		"unknown": "00000000-0000-0000-0000-000000000000",
		"used":    used.JoinToken,
	} {
		t.Run(name, func(t *testing.T) {
			cfg := testutil.AgentFor(t, srv, "/agent/"+name, "")
			cfg.JoinToken = token
			a := testutil.NewAgent(t, cfg)
			a.StartProcess(t)
			select {
			case <-a.Proc.Done():
			case <-time.After(deadline):
				t.Fatal("an agent with a refused join token keeps running")
			}
			if a.Proc.Err() == nil {
				t.Fatal("agent exited with status 0")
			}
			if logs := a.Proc.Logs(); !strings.Contains(logs, "join token does not exist or has already been used") {
				t.Fatalf("the server's message is not in the agent's output:\n%s", logs)
			}
			if _, err := os.Stat(filepath.Join(cfg.DataDir, "agent_svid.json")); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("refused agent persisted an SVID: %v", err)
			}
		})
	}
}

// TestRefusedPersistedIdentityAttestsWithNewToken: an agent evicted while
// it was stopped, started with a new -joinToken, attests with that token
// instead of ignoring it and serves its workload again.
func TestRefusedPersistedIdentityAttestsWithNewToken(t *testing.T) {
	s := newRevokeStack(t)
	before := testutil.RequireSVID(t, s.agent.SocketAddr(), s.webID, deadline)
	s.agent.Stop(t)
	s.srv.Admin(t).DeleteAgent(t, s.agentID)
	token := s.srv.Admin(t).CreateJoinToken(t, s.srv.ID("/agent/edge-1"))
	s.agent.Args = []string{"-joinToken", token}
	s.agent.Start(t)

	s.waitReady(t, http.StatusOK, "connected")
	if ids := s.agentIDs(t); !ids[s.srv.Admin(t).JoinTokenAgentID(token)] {
		t.Fatalf("server lists %v, want the agent of the new token", ids)
	}
	after := testutil.RequireSVID(t, s.agent.SocketAddr(), s.webID, deadline)
	if after.Certificates[0].SerialNumber.Cmp(before.Certificates[0].SerialNumber) == 0 {
		t.Fatal("the agent serves the refused identity's SVID")
	}
}

// TestServerDownIsNotRevocation (negative control): with the server
// stopped the agent stays degraded and keeps serving and keeping its
// files; when the server is back it is connected with the same identity.
func TestServerDownIsNotRevocation(t *testing.T) {
	s := newRevokeStack(t)
	s.srv.Stop(t)
	s.waitReady(t, http.StatusOK, "degraded:")
	s.agent.Proc.WaitForLog(t, "Server session ended", deadline)
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	if _, err := testutil.FetchX509SVIDs(ctx, s.agent.SocketAddr()); err != nil {
		t.Fatalf("fetch with the server down: %v", err)
	}
	if got := s.persisted(t); len(got) != 3 {
		t.Fatalf("with the server down the agent persists %v, want its SVID, key and cache", got)
	}
	s.waitFile(t, fsdelivery.SVIDFile, true)

	s.srv.Start(t)
	s.waitReady(t, http.StatusOK, "connected")
	if ids := s.agentIDs(t); !ids[s.agentID] || len(ids) != 1 {
		t.Fatalf("after the server restart it lists %v, want only %s", ids, s.agentID)
	}
	if strings.Contains(s.agent.Proc.Logs(), "The server refused this agent") {
		t.Fatal("a server outage was taken for a revocation")
	}
}
