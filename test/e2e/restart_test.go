package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// TestAgentRestartWhileServerDown: with the server stopped, a restarted
// agent serves the workload its SVID from data_dir: the very first
// Workload API call after the agent's socket is up succeeds (no retry),
// with the same certificate, still valid for the trust bundle.
func TestAgentRestartWhileServerDown(t *testing.T) {
	s := newStack(t)
	id := s.register(t, "/offline", uidSelector)
	before := testutil.RequireSVID(t, s.agent.SocketAddr(), id, deadline)
	bundle, err := x509bundle.Parse(s.srv.TrustDomain(), s.srv.Admin(t).BundlePEM(t))
	if err != nil {
		t.Fatal(err)
	}

	t0 := time.Now()
	s.srv.Stop(t)
	t.Logf("server stopped in %v", time.Since(t0))
	t0 = time.Now()
	s.agent.Stop(t)
	t.Logf("agent stopped in %v", time.Since(t0))
	s.agent.Start(t) // returns once the Workload API socket accepts connections

	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	svids, err := testutil.FetchX509SVIDs(ctx, s.agent.SocketAddr())
	if err != nil {
		t.Fatalf("first fetch after restart with the server down: %v", err)
	}
	var got *x509svid.SVID
	for _, sv := range svids {
		if sv.ID == id {
			got = sv
		}
	}
	if got == nil {
		t.Fatalf("restarted agent served %d SVIDs, none for %s", len(svids), id)
	}
	if got.Certificates[0].SerialNumber.Cmp(before.Certificates[0].SerialNumber) != 0 {
		t.Errorf("restarted agent served serial %v, want the persisted %v", got.Certificates[0].SerialNumber, before.Certificates[0].SerialNumber)
	}
	if _, _, err := x509svid.Verify(got.Certificates, bundle); err != nil {
		t.Errorf("served SVID does not verify against the bundle: %v", err)
	}
}

// TestAgentKilledReusesItsSVID: an agent killed with SIGKILL and started
// again without a join token re-authenticates to the server with its
// persisted agent SVID: it stays one attested agent with the same SVID,
// and entries created afterwards still reach its workloads.
func TestAgentKilledReusesItsSVID(t *testing.T) {
	s := newStack(t)
	first := s.register(t, "/before-kill", uidSelector)
	testutil.RequireSVID(t, s.agent.SocketAddr(), first, deadline)
	agentsBefore := s.srv.Admin(t).ListAgents(t)
	if len(agentsBefore) != 1 {
		t.Fatalf("%d attested agents, want 1", len(agentsBefore))
	}

	s.agent.Proc.Kill()
	s.agent.Config.JoinToken = "" // the token was single-use anyway
	s.agent.Start(t)

	second := s.register(t, "/after-kill", uidSelector)
	testutil.RequireSVID(t, s.agent.SocketAddr(), second, deadline)

	agentsAfter := s.srv.Admin(t).ListAgents(t)
	if len(agentsAfter) != 1 {
		t.Fatalf("%d attested agents after restart, want 1", len(agentsAfter))
	}
	b, a := agentsBefore[0], agentsAfter[0]
	if testutil.IDString(a.GetId()) != testutil.IDString(b.GetId()) {
		t.Errorf("agent ID %s after restart, want %s", testutil.IDString(a.GetId()), testutil.IDString(b.GetId()))
	}
	if a.GetX509SvidSerialNumber() != b.GetX509SvidSerialNumber() {
		t.Errorf("agent SVID serial changed across the restart: %s -> %s (re-attested?)", b.GetX509SvidSerialNumber(), a.GetX509SvidSerialNumber())
	}
}
