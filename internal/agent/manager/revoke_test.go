package manager_test

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/agent/manager"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// persistedFiles are what an attested agent with one workload SVID keeps
// in its data dir (startAgent puts the disk key manager in dir/keys).
func persistedFiles(dir string) []string {
	return []string{
		filepath.Join(dir, "agent_svid.json"),
		filepath.Join(dir, cache.FileName),
		filepath.Join(dir, "keys", "agent-svid-a.pem"),
	}
}

func requireFiles(t *testing.T, paths []string, present bool) {
	t.Helper()
	for _, p := range paths {
		_, err := os.Stat(p)
		switch {
		case present && err != nil:
			t.Errorf("%s: %v, want it present", filepath.Base(p), err)
		case !present && !errors.Is(err, fs.ErrNotExist):
			t.Errorf("%s still exists (%v), want it deleted", filepath.Base(p), err)
		}
	}
}

// refusalLogged waits for the one ERROR line of a revocation and checks
// its reason.
func refusalLogged(t *testing.T, rec *logRecorder, reason string) {
	t.Helper()
	var errs []slog.Record
	eventually(t, "the revocation's ERROR line", func() bool {
		errs = rec.find(slog.LevelError, "The server refused this agent")
		return len(errs) > 0
	})
	if len(errs) != 1 || attr(errs[0], "reason").String() != reason || attr(errs[0], "error").String() == "" {
		t.Fatalf("want one ERROR line with reason %s and the server's message, got %d (reason %v)", reason, len(errs), attr(errs[0], "reason"))
	}
}

func uidSet(uid string) selector.Set {
	return selector.NewSet(selector.Selector{Type: "unix", Value: "uid:" + uid})
}

// attestedWithSpareToken starts an agent with token t1, waits for the
// workload uid's SVID, then restarts it with a second, unused token t2: the
// persisted SVID is used and t2 is kept. It returns the running agent, its
// log and t2's agent ID.
func attestedWithSpareToken(t *testing.T, srv *testServer, dir, uid string) (*testAgent, *logRecorder, spiffeid.ID, spiffeid.ID) {
	t.Helper()
	t1, agent1 := srv.createToken()
	wl := spiffeid.RequireFromPath(td, "/workload/"+uid)
	srv.createEntry(agent1, wl.Path(), uid)
	a := startAgent(t, srv, dir, agentOpts{token: t1})
	a.waitIdentity(uid, wl)
	a.stop()

	t2, agent2 := srv.createToken()
	rec := &logRecorder{}
	b := startAgent(t, srv, dir, agentOpts{token: t2, log: slog.New(rec)})
	b.waitIdentity(uid, wl)
	eventually(t, "connected", func() bool { return b.m.Status().State == manager.StateConnected })
	if got := b.m.AgentSVID().ID; got != agent1 {
		t.Fatalf("restarted agent is %s, want the persisted %s (the spare token must not be used)", got, agent1)
	}
	return b, rec, agent1, agent2
}

// TestBannedAgentIsRevoked: a ban ends serving at once (the workload sees
// no entry), deletes the persisted agent SVID, its key and the workload
// cache, reports revoked with the reason and logs it at ERROR; a banned
// agent does not attest again, not even with an unused join token.
func TestBannedAgentIsRevoked(t *testing.T) {
	srv := newTestServer(t, serverOpts{})
	dir := t.TempDir()
	a, rec, agentID, spareID := attestedWithSpareToken(t, srv, dir, "5000")
	requireFiles(t, persistedFiles(dir), true)

	srv.ban(agentID)
	a.waitUpdate("5000", func(u *cache.WorkloadUpdate) bool { return len(u.Entries) == 0 })
	st := a.m.Status()
	if st.State != manager.StateRevoked || !st.Banned || st.RevokedReason != "AGENT_BANNED" || st.RevokedAt.IsZero() {
		t.Fatalf("status after ban: state %s banned %v reason %q at %v", st.State, st.Banned, st.RevokedReason, st.RevokedAt)
	}
	if st.Connected || st.SVIDs != 0 || a.m.AgentSVID() != nil {
		t.Fatalf("revoked agent still connected (%v), serving %d SVIDs or holding an agent SVID", st.Connected, st.SVIDs)
	}
	requireFiles(t, persistedFiles(dir), false)
	refusalLogged(t, rec, "AGENT_BANNED")

	// The decision not to attest again is logged; after it, the spare
	// token is still unused and the state still revoked.
	eventually(t, "the decision not to attest again", func() bool {
		return len(rec.find(slog.LevelInfo, "Not attesting again")) > 0
	})
	if srv.agents()[spareID] {
		t.Fatal("the banned agent attested again with its spare join token")
	}
	if a.m.Status().State != manager.StateRevoked {
		t.Fatalf("state %s, want revoked", a.m.Status().State)
	}
}

// TestEvictedAgentAttestsAgain: evicted (agent record deleted) while it
// runs, an agent with an unused join token drops everything, attests with
// that token at once and serves the new agent's entries.
func TestEvictedAgentAttestsAgain(t *testing.T) {
	srv := newTestServer(t, serverOpts{})
	dir := t.TempDir()
	a, rec, agentID, spareID := attestedWithSpareToken(t, srv, dir, "5100")
	wl2 := spiffeid.RequireFromPath(td, "/workload/after-evict")
	srv.createEntry(spareID, wl2.Path(), "5101")

	srv.evict(agentID)
	a.waitIdentity("5101", wl2)
	eventually(t, "connected again", func() bool { return a.m.Status().State == manager.StateConnected })
	if got := a.m.AgentSVID().ID; got != spareID {
		t.Fatalf("agent is %s after re-attestation, want %s", got, spareID)
	}
	if u := a.cache.FetchWorkloadUpdate(uidSet("5100")); len(u.Entries) != 0 {
		t.Fatal("the evicted agent's entries are still served")
	}
	refusalLogged(t, rec, "AGENT_NOT_ATTESTED")
	requireFiles(t, persistedFiles(dir), true) // the new identity's
}

// TestRefusedPersistedIdentityUsesNewToken: an agent whose persisted SVID
// was revoked while it was stopped, started with a new join token, attests
// with it instead of ignoring it. For a ban this holds too: the ban
// predates this start.
func TestRefusedPersistedIdentityUsesNewToken(t *testing.T) {
	for _, tc := range []struct {
		name   string
		revoke func(*testServer, spiffeid.ID)
	}{
		{"evicted", (*testServer).evict},
		{"banned", (*testServer).ban},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newTestServer(t, serverOpts{})
			t1, agent1 := srv.createToken()
			wl := spiffeid.RequireFromPath(td, "/workload/old")
			srv.createEntry(agent1, wl.Path(), "5200")
			dir := t.TempDir()
			a := startAgent(t, srv, dir, agentOpts{token: t1})
			a.waitIdentity("5200", wl)
			a.stop()

			tc.revoke(srv, agent1)
			t2, agent2 := srv.createToken()
			wl2 := spiffeid.RequireFromPath(td, "/workload/new")
			srv.createEntry(agent2, wl2.Path(), "5201")
			b := startAgent(t, srv, dir, agentOpts{token: t2})
			b.waitIdentity("5201", wl2)
			if got := b.m.AgentSVID().ID; got != agent2 {
				t.Fatalf("agent is %s, want %s", got, agent2)
			}
			if u := b.cache.FetchWorkloadUpdate(uidSet("5200")); len(u.Entries) != 0 {
				t.Fatal("the refused identity's entries are still served")
			}
		})
	}
}

// TestFirstStartRefusedTokenEndsRun: an agent with no persisted identity
// whose join token the server refuses stops with the server's message
// instead of retrying forever.
func TestFirstStartRefusedTokenEndsRun(t *testing.T) {
	clk := clock.NewFake(time.Now())
	srv := newTestServer(t, serverOpts{clock: clk})
	used, _ := srv.createToken()
	a := startAgent(t, srv, t.TempDir(), agentOpts{token: used, clock: clk})
	eventually(t, "attested", func() bool { return a.m.AgentSVID() != nil })

	expired, _ := srv.createToken() // 10 minutes
	for _, tc := range []struct {
		name, token, want string
		advance           time.Duration
	}{
		{name: "unknown", token: "no-such-token", want: "join token does not exist or has already been used"},
		{name: "used", token: used, want: "join token does not exist or has already been used"},
		{name: "expired", token: expired, advance: 11 * time.Minute, want: "join token expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk.Add(tc.advance)
			dir := t.TempDir()
			b := startAgent(t, srv, dir, agentOpts{token: tc.token, clock: clk})
			err := b.runResult()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run = %v, want the server's %q", err, tc.want)
			}
			if _, serr := os.Stat(filepath.Join(dir, "agent_svid.json")); !errors.Is(serr, fs.ErrNotExist) {
				t.Fatalf("refused agent persisted an SVID: %v", serr)
			}
		})
	}
}

// TestUnreachableAtFirstStartRetries: a fresh agent whose server is down
// keeps trying (degraded by nothing, expired), and attests once it is up.
func TestUnreachableAtFirstStartRetries(t *testing.T) {
	srv := newTestServer(t, serverOpts{})
	token, agentID := srv.createToken()
	wl := spiffeid.RequireFromPath(td, "/workload/late")
	srv.createEntry(agentID, wl.Path(), "5300")
	srv.stop()
	a := startAgent(t, srv, t.TempDir(), agentOpts{token: token})
	eventually(t, "a failed attempt", func() bool { return a.m.Status().LastError != "not connected yet" })
	if st := a.m.Status(); st.State != manager.StateExpired {
		t.Fatalf("state %s while the server is down, want expired", st.State)
	}
	srv.start()
	a.waitIdentity("5300", wl)
}

// TestPollingServerBanRevokes: against a server without watch mode (as
// spire-server) the refusal comes from the periodic sync.
func TestPollingServerBanRevokes(t *testing.T) {
	srv := newTestServer(t, serverOpts{})
	token, agentID := srv.createToken()
	wl := spiffeid.RequireFromPath(td, "/workload/polled")
	srv.createEntry(agentID, wl.Path(), "5400")
	dir := t.TempDir()
	a := startAgent(t, srv, dir, agentOpts{token: token, poll: 50 * time.Millisecond,
		dialOptions: []grpc.DialOption{grpc.WithStreamInterceptor(stripWatch)}})
	a.waitIdentity("5400", wl)
	if a.m.Status().WatchMode {
		t.Fatal("watch mode despite the stripped metadata")
	}
	srv.ban(agentID)
	a.waitUpdate("5400", func(u *cache.WorkloadUpdate) bool { return len(u.Entries) == 0 })
	if st := a.m.Status(); st.State != manager.StateRevoked || st.RevokedReason != "AGENT_BANNED" {
		t.Fatalf("state %s reason %q, want revoked AGENT_BANNED", st.State, st.RevokedReason)
	}
	requireFiles(t, persistedFiles(dir), false)
}

// TestServerDownAndRestartAreNotRevocation: the server stopping (streams
// end with Unavailable, then connections are refused) and coming back is
// never taken for a refusal: the agent stays degraded, keeps serving and
// keeps its files, then reconnects with the same identity.
func TestServerDownAndRestartAreNotRevocation(t *testing.T) {
	srv := newTestServer(t, serverOpts{})
	token, agentID := srv.createToken()
	wl := spiffeid.RequireFromPath(td, "/workload/steady")
	srv.createEntry(agentID, wl.Path(), "5500")
	dir := t.TempDir()
	a := startAgent(t, srv, dir, agentOpts{token: token})
	a.waitIdentity("5500", wl)

	srv.stop()
	after := time.Now()
	eventually(t, "a failed reconnection", func() bool { return a.m.Status().LastErrorAt.After(after) })
	st := a.m.Status()
	if st.State != manager.StateDegraded || a.cache.Revoked() {
		t.Fatalf("server down: state %s (revoked cache %v), want degraded", st.State, a.cache.Revoked())
	}
	if u := a.cache.FetchWorkloadUpdate(uidSet("5500")); len(u.Identities) != 1 {
		t.Fatal("degraded agent stopped serving")
	}
	requireFiles(t, persistedFiles(dir), true)

	srv.start()
	eventually(t, "connected again", func() bool { return a.m.Status().State == manager.StateConnected })
	if a.m.AgentSVID().ID != agentID || a.cache.Revoked() {
		t.Fatal("identity changed across a server restart")
	}
	// The agent is still known to the server with the same SVID.
	if _, err := srv.admin().Agent.GetAgent(context.Background(), &agentv1.GetAgentRequest{Id: &types.SPIFFEID{TrustDomain: td.Name(), Path: agentID.Path()}}); err != nil {
		t.Fatalf("GetAgent: %v", err)
	}
}
