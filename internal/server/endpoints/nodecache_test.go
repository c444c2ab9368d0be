package endpoints_test

import (
	"context"
	"testing"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"

	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// The agent check reads nodes from the entry cache. These tests run the
// cache without its Run loop, so a ban, deletion or promotion is seen by
// the next RPC only through the cache's read-your-writes path.

// agentWithEntry attests an agent and creates one workload entry under it.
func agentWithEntry(t *testing.T, h *harness) (*x509svid.SVID, *datastore.Entry) {
	t.Helper()
	svid, err := h.attest(h.anonConn(), h.createToken(&agentv1.CreateJoinTokenRequest{}), newKey(t))
	if err != nil {
		t.Fatal(err)
	}
	wl := h.createEntry(&datastore.Entry{SPIFFEID: "spiffe://example.org/w", ParentID: svid.ID.String(),
		Selectors: []selector.Selector{{Type: "unix", Value: "uid:1"}}})
	return svid, wl
}

func newX509(t *testing.T, c svidv1.SVIDClient, entryID string) error {
	t.Helper()
	resp, err := c.BatchNewX509SVID(context.Background(), &svidv1.BatchNewX509SVIDRequest{
		Params: []*svidv1.NewX509SVIDParams{{EntryId: entryID, Csr: csrFor(t, newKey(t))}}})
	if err != nil {
		return err
	}
	if code := codes.Code(resp.Results[0].GetStatus().GetCode()); code != codes.OK {
		t.Fatalf("BatchNewX509SVID result: %v %s", code, resp.Results[0].GetStatus().GetMessage())
	}
	return nil
}

func requireDenied(t *testing.T, err error, reason types.PermissionDeniedDetails_Reason) {
	t.Helper()
	requireCode(t, err, codes.PermissionDenied)
	if r := deniedReason(err); r != reason {
		t.Fatalf("reason = %v, want %v", r, reason)
	}
}

func TestBanIsEffectiveOnNextRPC(t *testing.T) {
	h := newHarness(t, harnessOpts{noCacheRun: true})
	ctx := context.Background()
	svid, wl := agentWithEntry(t, h)
	c := svidv1.NewSVIDClient(h.svidConn(svid))
	if err := newX509(t, c, wl.ID); err != nil {
		t.Fatalf("before the ban: %v", err)
	}
	admin := agentv1.NewAgentClient(h.localConn())
	if _, err := admin.BanAgent(ctx, &agentv1.BanAgentRequest{Id: &types.SPIFFEID{TrustDomain: td.Name(), Path: svid.ID.Path()}}); err != nil {
		t.Fatal(err)
	}
	requireDenied(t, newX509(t, c, wl.ID), types.PermissionDeniedDetails_AGENT_BANNED)
}

func TestDeleteIsEffectiveOnNextRPC(t *testing.T) {
	h := newHarness(t, harnessOpts{noCacheRun: true})
	ctx := context.Background()
	svid, wl := agentWithEntry(t, h)
	c := svidv1.NewSVIDClient(h.svidConn(svid))
	if err := newX509(t, c, wl.ID); err != nil {
		t.Fatalf("before the delete: %v", err)
	}
	admin := agentv1.NewAgentClient(h.localConn())
	if _, err := admin.DeleteAgent(ctx, &agentv1.DeleteAgentRequest{Id: &types.SPIFFEID{TrustDomain: td.Name(), Path: svid.ID.Path()}}); err != nil {
		t.Fatal(err)
	}
	requireDenied(t, newX509(t, c, wl.ID), types.PermissionDeniedDetails_AGENT_NOT_ATTESTED)
}

// TestBanByAnotherServer: a ban written to the shared database by another
// server (another store on the database: no notification reaches this
// server's cache) takes effect once the cache applies the node journal
// (its poll). Until then the cached record is used, which shows the
// check does not read the datastore on every RPC.
func TestBanByAnotherServer(t *testing.T) {
	h := newHarness(t, harnessOpts{noCacheRun: true})
	ctx := context.Background()
	svid, wl := agentWithEntry(t, h)
	c := svidv1.NewSVIDClient(h.svidConn(svid))
	if err := newX509(t, c, wl.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := h.otherServer(t).UpdateNode(ctx, &datastore.AttestedNode{SPIFFEID: svid.ID.String()}, &datastore.NodeMask{CertSerial: true, NewCertSerial: true}); err != nil {
		t.Fatal(err)
	}
	if err := newX509(t, c, wl.ID); err != nil {
		t.Fatalf("before the poll applied the remote ban: %v (want the cached record used)", err)
	}
	if err := h.cache.Sync(ctx); err != nil { // what the poll does
		t.Fatal(err)
	}
	requireDenied(t, newX509(t, c, wl.ID), types.PermissionDeniedDetails_AGENT_BANNED)
}

// TestRenewedSVIDAcceptedAfterPromotion: the first use of a renewed SVID
// promotes it (a datastore write); the cache then serves the promoted
// record, so the renewed SVID keeps working and the old one is refused.
func TestRenewedSVIDAcceptedAfterPromotion(t *testing.T) {
	h := newHarness(t, harnessOpts{noCacheRun: true})
	ctx := context.Background()
	svid, wl := agentWithEntry(t, h)
	oldConn := h.svidConn(svid)
	if err := newX509(t, svidv1.NewSVIDClient(oldConn), wl.ID); err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	resp, err := agentv1.NewAgentClient(oldConn).RenewAgent(ctx, &agentv1.RenewAgentRequest{Params: &agentv1.AgentX509SVIDParams{Csr: csrFor(t, key)}})
	if err != nil {
		t.Fatalf("RenewAgent: %v", err)
	}
	renewed, err := svidFromChain(resp.Svid.CertChain, key)
	if err != nil {
		t.Fatal(err)
	}
	newSerial := renewed.Certificates[0].SerialNumber.String()
	// Until the renewed SVID is used, both are accepted.
	if err := newX509(t, svidv1.NewSVIDClient(oldConn), wl.ID); err != nil {
		t.Fatalf("old SVID before promotion: %v", err)
	}

	newClient := svidv1.NewSVIDClient(h.svidConn(renewed))
	for i := range 3 { // the first call promotes; the later ones match CertSerial
		if err := newX509(t, newClient, wl.ID); err != nil {
			t.Fatalf("renewed SVID, call %d: %v", i, err)
		}
	}
	node, err := h.ds.GetNode(ctx, svid.ID.String())
	if err != nil {
		t.Fatal(err)
	}
	if node.CertSerial != newSerial || node.NewCertSerial != "" {
		t.Fatalf("stored node serials %q/%q, want %q/\"\"", node.CertSerial, node.NewCertSerial, newSerial)
	}
	cached, err := h.cache.GetNode(ctx, svid.ID.String())
	if err != nil {
		t.Fatal(err)
	}
	if cached.CertSerial != newSerial || cached.NewCertSerial != "" {
		t.Fatalf("cached node serials %q/%q, want %q/\"\"", cached.CertSerial, cached.NewCertSerial, newSerial)
	}
	requireDenied(t, newX509(t, svidv1.NewSVIDClient(oldConn), wl.ID), types.PermissionDeniedDetails_AGENT_NOT_ACTIVE)
}

// TestRenewalByAnotherServer: an agent renewed on another server (its new
// serial written to the shared database by another store) presents the new
// SVID at once: the cache's record would refuse it, so the denial is
// confirmed on the datastore, which accepts (and the SVID is promoted).
func TestRenewalByAnotherServer(t *testing.T) {
	h := newHarness(t, harnessOpts{noCacheRun: true})
	ctx := context.Background()
	svid, wl := agentWithEntry(t, h)
	if err := newX509(t, svidv1.NewSVIDClient(h.svidConn(svid)), wl.ID); err != nil {
		t.Fatal(err)
	}
	renewed := h.mintSVID(svid.ID) // as the other server's RenewAgent would sign
	leaf := renewed.Certificates[0]
	if _, err := h.otherServer(t).UpdateNode(ctx, &datastore.AttestedNode{SPIFFEID: svid.ID.String(), NewCertSerial: leaf.SerialNumber.String(), NewCertNotAfter: leaf.NotAfter.Unix()},
		&datastore.NodeMask{NewCertSerial: true, NewCertNotAfter: true}); err != nil {
		t.Fatal(err)
	}
	if err := newX509(t, svidv1.NewSVIDClient(h.svidConn(renewed)), wl.ID); err != nil {
		t.Fatalf("SVID renewed on another server: %v", err)
	}
	node, err := h.ds.GetNode(ctx, svid.ID.String())
	if err != nil {
		t.Fatal(err)
	}
	if node.CertSerial != leaf.SerialNumber.String() {
		t.Fatalf("stored serial %q, want the renewed %q", node.CertSerial, leaf.SerialNumber)
	}

	// An SVID the node never had is still refused.
	stranger := h.mintSVID(svid.ID)
	requireDenied(t, newX509(t, svidv1.NewSVIDClient(h.svidConn(stranger)), wl.ID), types.PermissionDeniedDetails_AGENT_NOT_ACTIVE)
}
