package manager_test

import (
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/agent/manager"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/testutil/testattestor"
)

// challengeEnv is the real server with the challenge/response test
// attestor registered beside join_token, and the agent half of node-1.
type challengeEnv struct {
	srv     *testServer
	sa      *testattestor.Server
	ag      *testattestor.Agent
	agentID spiffeid.ID
}

func newChallengeEnv(t *testing.T, clk clock.Clock) *challengeEnv {
	t.Helper()
	secret := []byte("test secret")
	sa := testattestor.NewServer(td, secret)
	srv := newTestServer(t, serverOpts{agentTTL: 4 * time.Hour, clock: clk, attestors: map[string]serverAttestor{testattestor.Name: sa}})
	return &challengeEnv{srv: srv, sa: sa, ag: &testattestor.Agent{Node: "node-1", Secret: secret}, agentID: testattestor.AgentID(td, "node-1")}
}

// persistedReattestable reads the reattestable flag of agent_svid.json.
func persistedReattestable(t *testing.T, dir string) bool {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, manager.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Reattestable bool `json:"reattestable"`
	}
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	return st.Reattestable
}

// advanceUntil moves the fake clock on in small steps (backoff and retry
// timers run on it) until cond holds.
func advanceUntil(t *testing.T, clk *clock.Fake, what string, cond func() bool) {
	t.Helper()
	eventually(t, what, func() bool {
		if cond() {
			return true
		}
		clk.Add(50 * time.Millisecond)
		return false
	})
}

// TestChallengeResponseAttestation: the manager attests with an attestor
// it knows only as a NodeAttestor: the server's challenge is answered, the
// SVID is the attestor's agent ID, entries under it are served, and the
// server's reattestable flag is persisted with the SVID.
func TestChallengeResponseAttestation(t *testing.T) {
	e := newChallengeEnv(t, nil)
	wl := spiffeid.RequireFromPath(td, "/workload/cr")
	e.srv.createEntry(e.agentID, wl.Path(), "6000")
	dir := t.TempDir()
	a := startAgent(t, e.srv, dir, agentOpts{attestor: e.ag})
	verifySVID(t, e.srv, a.waitIdentity("6000", wl), wl)
	if got := a.m.AgentSVID().ID; got != e.agentID {
		t.Fatalf("agent is %s, want %s", got, e.agentID)
	}
	if n := e.sa.Successes(); n != 1 {
		t.Errorf("%d attestations accepted, want 1", n)
	}
	if !persistedReattestable(t, dir) {
		t.Error("agent_svid.json does not record that the server said reattestable")
	}
}

// TestRenewalReattests: when the server said reattestable, the agent
// renews its SVID by attesting again (the server would refuse RenewAgent
// with AGENT_MUST_REATTEST), keeps serving, and a restart restores the new
// SVID with its flag.
func TestRenewalReattests(t *testing.T) {
	clk := clock.NewFake(time.Now())
	e := newChallengeEnv(t, clk)
	wl := spiffeid.RequireFromPath(td, "/workload/renew")
	e.srv.createEntry(e.agentID, wl.Path(), "6100")
	dir := t.TempDir()
	rec := &logRecorder{}
	a := startAgent(t, e.srv, dir, agentOpts{attestor: e.ag, clock: clk, log: slog.New(rec)})
	a.waitIdentity("6100", wl)
	first := a.m.AgentSVID()

	// Past the agent SVID's half-life (4h TTL, jitter up to 24 min).
	clk.Add(2*time.Hour + 30*time.Minute)
	eventually(t, "a new agent SVID", func() bool {
		return a.m.AgentSVID().Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0
	})
	if n := e.sa.Successes(); n != 2 {
		t.Fatalf("%d attestations accepted, want 2 (the first and the renewal)", n)
	}
	if len(rec.find(slog.LevelInfo, "Re-attested the node")) != 1 || len(rec.find(slog.LevelInfo, "Renewed the agent SVID")) != 0 ||
		len(rec.find(slog.LevelInfo, "The server requires re-attestation")) != 0 {
		t.Fatal("the renewal was not one re-attestation, without trying RenewAgent first")
	}
	if got := a.m.AgentSVID().ID; got != e.agentID {
		t.Fatalf("re-attested as %s", got)
	}
	// The new SVID authenticates the next session: entries still flow.
	wl2 := spiffeid.RequireFromPath(td, "/workload/after-reattest")
	e.srv.createEntry(e.agentID, wl2.Path(), "6101")
	a.waitIdentity("6101", wl2)
	if st := a.m.Status(); st.State != manager.StateConnected {
		t.Fatalf("state %s after re-attestation", st.State)
	}

	renewed := a.m.AgentSVID()
	a.stop()
	b := startAgent(t, e.srv, dir, agentOpts{attestor: e.ag, clock: clk})
	if got := b.m.AgentSVID(); got.Certificates[0].SerialNumber.Cmp(renewed.Certificates[0].SerialNumber) != 0 {
		t.Fatal("restart did not restore the re-attested SVID")
	}
	if !persistedReattestable(t, dir) {
		t.Error("the re-attested SVID was persisted without its reattestable flag")
	}
}

// TestRefusedReattestationRevokes: a node the server no longer accepts (a
// revoked device certificate, a changed PCR) loses its identity at the
// next renewal: revoked at once, files deleted, workloads served nothing.
// It keeps attesting again while revoked, and serves again once the
// server accepts it.
func TestRefusedReattestationRevokes(t *testing.T) {
	clk := clock.NewFake(time.Now())
	e := newChallengeEnv(t, clk)
	wl := spiffeid.RequireFromPath(td, "/workload/denied")
	e.srv.createEntry(e.agentID, wl.Path(), "6200")
	dir := t.TempDir()
	rec := &logRecorder{}
	a := startAgent(t, e.srv, dir, agentOpts{attestor: e.ag, clock: clk, log: slog.New(rec)})
	a.waitIdentity("6200", wl)
	requireFiles(t, persistedFiles(dir), true)

	e.sa.Deny("node-1")
	clk.Add(2*time.Hour + 30*time.Minute)
	a.waitUpdate("6200", func(u *cache.WorkloadUpdate) bool { return len(u.Entries) == 0 })
	st := a.m.Status()
	if st.State != manager.StateRevoked || st.Banned || st.RevokedReason != "ATTESTATION_REFUSED" {
		t.Fatalf("status after the refused re-attestation: state %s banned %v reason %q", st.State, st.Banned, st.RevokedReason)
	}
	if a.m.AgentSVID() != nil || st.SVIDs != 0 {
		t.Fatal("the refused node still holds an identity")
	}
	requireFiles(t, persistedFiles(dir), false)
	refusalLogged(t, rec, "ATTESTATION_REFUSED")

	// It tries again (and is refused again) while revoked...
	refused := e.sa.Attests() - e.sa.Successes()
	advanceUntil(t, clk, "another attempt", func() bool { return e.sa.Attests()-e.sa.Successes() > refused })
	if st := a.m.Status(); st.State != manager.StateRevoked {
		t.Fatalf("state %s after a refused attempt, want revoked", st.State)
	}
	if n := len(rec.find(slog.LevelError, "The server refused this agent")); n != 1 {
		t.Fatalf("the revocation was logged %d times at ERROR, want once", n)
	}
	// ...and serves again once the server accepts the node.
	e.sa.Allow("node-1")
	advanceUntil(t, clk, "connected again", func() bool { return a.m.Status().State == manager.StateConnected })
	a.waitIdentity("6200", wl)
}

// TestEvictedReattestableAgentAttestsAgain: evicted while it runs, an
// agent whose attestor can repeat its proof attests again by itself, as
// the same agent ID, and serves the entries registered under it.
func TestEvictedReattestableAgentAttestsAgain(t *testing.T) {
	e := newChallengeEnv(t, nil)
	wl := spiffeid.RequireFromPath(td, "/workload/evicted")
	e.srv.createEntry(e.agentID, wl.Path(), "6300")
	dir := t.TempDir()
	rec := &logRecorder{}
	a := startAgent(t, e.srv, dir, agentOpts{attestor: e.ag, log: slog.New(rec)})
	a.waitIdentity("6300", wl)
	first := a.m.AgentSVID()

	e.srv.evict(e.agentID)
	refusalLogged(t, rec, "AGENT_NOT_ATTESTED")
	eventually(t, "attested again", func() bool { return e.sa.Successes() == 2 })
	eventually(t, "connected again", func() bool { return a.m.Status().State == manager.StateConnected })
	got := a.waitIdentity("6300", wl)
	if s := a.m.AgentSVID(); s.ID != e.agentID || s.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) == 0 {
		t.Fatalf("agent SVID after the eviction: %s serial %s", s.ID, s.Certificates[0].SerialNumber)
	}
	verifySVID(t, e.srv, got, wl)
	if !e.srv.agents()[e.agentID] {
		t.Fatal("the server has no record of the re-attested agent")
	}
	requireFiles(t, persistedFiles(dir)[:2], true) // the new identity's (its key alternates)
}

// TestBannedReattestableAgentStaysRevoked: a ban while running is final
// for this process, whatever the attestor.
func TestBannedReattestableAgentStaysRevoked(t *testing.T) {
	e := newChallengeEnv(t, nil)
	wl := spiffeid.RequireFromPath(td, "/workload/banned")
	e.srv.createEntry(e.agentID, wl.Path(), "6400")
	rec := &logRecorder{}
	a := startAgent(t, e.srv, t.TempDir(), agentOpts{attestor: e.ag, log: slog.New(rec)})
	a.waitIdentity("6400", wl)

	e.srv.ban(e.agentID)
	refusalLogged(t, rec, "AGENT_BANNED")
	eventually(t, "the decision not to attest again", func() bool {
		return len(rec.find(slog.LevelInfo, "Not attesting again")) > 0
	})
	if n := e.sa.Attests(); n != 1 {
		t.Fatalf("the banned agent attested again (%d attestations)", n)
	}
	if st := a.m.Status(); st.State != manager.StateRevoked || !st.Banned {
		t.Fatalf("state %s banned %v", st.State, st.Banned)
	}
}

// TestMustReattest: an agent that does not know its attestor can
// re-attest (agent_svid.json of an earlier version, without the flag)
// renews with RenewAgent; the server answers AGENT_MUST_REATTEST, and the
// agent attests again instead: nothing is revoked.
func TestMustReattest(t *testing.T) {
	clk := clock.NewFake(time.Now())
	e := newChallengeEnv(t, clk)
	wl := spiffeid.RequireFromPath(td, "/workload/must")
	e.srv.createEntry(e.agentID, wl.Path(), "6500")
	dir := t.TempDir()
	a := startAgent(t, e.srv, dir, agentOpts{attestor: e.ag, clock: clk})
	a.waitIdentity("6500", wl)
	a.stop()

	path := filepath.Join(dir, manager.StateFile)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	delete(st, "reattestable")
	if data, err = json.Marshal(st); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}

	rec := &logRecorder{}
	b := startAgent(t, e.srv, dir, agentOpts{attestor: e.ag, clock: clk, log: slog.New(rec)})
	b.waitIdentity("6500", wl)
	first := b.m.AgentSVID()
	clk.Add(2*time.Hour + 30*time.Minute)
	eventually(t, "a new agent SVID", func() bool {
		return b.m.AgentSVID().Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0
	})
	if len(rec.find(slog.LevelInfo, "The server requires re-attestation instead of renewal")) != 1 {
		t.Fatal("AGENT_MUST_REATTEST was not acted on")
	}
	if n := e.sa.Successes(); n != 2 {
		t.Fatalf("%d attestations accepted, want 2", n)
	}
	if st := b.m.Status(); !st.RevokedAt.IsZero() {
		t.Fatalf("AGENT_MUST_REATTEST revoked the agent (%s)", st.RevokedReason)
	}
	if !persistedReattestable(t, dir) {
		t.Error("the flag learnt from the re-attestation was not persisted")
	}
	b.waitIdentity("6500", wl)
}

// TestFirstStartRefusedAttestationEndsRun: a fresh agent whose proof the
// server refuses stops with the server's message, as with a bad join
// token, and persists nothing.
func TestFirstStartRefusedAttestationEndsRun(t *testing.T) {
	e := newChallengeEnv(t, nil)
	dir := t.TempDir()
	wrong := &testattestor.Agent{Node: "node-1", Secret: []byte("not the secret")}
	a := startAgent(t, e.srv, dir, agentOpts{attestor: wrong})
	err := a.runResult()
	if err == nil || !strings.Contains(err.Error(), `NodeAttestor "test_challenge"`) || !strings.Contains(err.Error(), "refused by the server") {
		t.Fatalf("Run = %v, want the server's refusal naming the attestor", err)
	}
	if _, serr := os.Stat(filepath.Join(dir, manager.StateFile)); serr == nil {
		t.Fatal("the refused agent persisted an SVID")
	}
}

// TestAttestorFailureIsRetried: an attestor failing on the agent (its
// device missing) is no refusal: the agent keeps trying, and attests once
// the attestor works.
func TestAttestorFailureIsRetried(t *testing.T) {
	e := newChallengeEnv(t, nil)
	wl := spiffeid.RequireFromPath(td, "/workload/retried")
	e.srv.createEntry(e.agentID, wl.Path(), "6600")
	e.ag.Fail.Store(true)
	a := startAgent(t, e.srv, t.TempDir(), agentOpts{attestor: e.ag})
	eventually(t, "two failed attempts", func() bool { return e.ag.Begins() >= 2 })
	if st := a.m.Status(); st.State != manager.StateExpired || !strings.Contains(st.LastError, "device unavailable") {
		t.Fatalf("state %s, last error %q", st.State, st.LastError)
	}
	e.ag.Fail.Store(false)
	a.waitIdentity("6600", wl)
}
