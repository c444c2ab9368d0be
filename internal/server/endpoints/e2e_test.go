package endpoints_test

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

func TestJoinTokenAttestation(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	token := h.createToken(&agentv1.CreateJoinTokenRequest{Ttl: 600})
	if len(token) < 32 {
		t.Fatalf("generated token %q is too short", token)
	}
	// Only the hash is stored.
	if _, err := h.ds.ConsumeJoinToken(ctx, [32]byte{}); err == nil {
		t.Fatal("zero hash found a token")
	}

	key := newKey(t)
	svid, err := h.attest(h.anonConn(), token, key)
	if err != nil {
		t.Fatalf("AttestAgent: %v", err)
	}
	wantID := spiffeid.RequireFromPath(td, "/spire/agent/join_token/"+token)
	id, chains, err := x509svid.Verify(svid.Certificates, h.bundle())
	if err != nil {
		t.Fatalf("agent SVID does not verify against the bundle: %v", err)
	}
	if id != wantID {
		t.Fatalf("agent ID = %s, want %s", id, wantID)
	}
	if len(chains) == 0 {
		t.Fatal("no verified chain")
	}
	leaf := svid.Certificates[0]
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got > time.Hour+time.Minute {
		t.Fatalf("agent SVID lifetime %s exceeds agent_ttl", got)
	}

	node, err := h.ds.GetNode(ctx, wantID.String())
	if err != nil {
		t.Fatalf("node not stored: %v", err)
	}
	if node.AttestationType != "join_token" || node.CertSerial != leaf.SerialNumber.String() || node.CertNotAfter != leaf.NotAfter.Unix() {
		t.Fatalf("node = %+v, want join_token with serial %s", node, leaf.SerialNumber)
	}

	// Reuse is refused.
	_, err = h.attest(h.anonConn(), token, newKey(t))
	requireCode(t, err, codes.InvalidArgument)
	if !strings.Contains(status.Convert(err).Message(), "does not exist or has already been used") {
		t.Fatalf("reuse error = %v", err)
	}

	// GetAgent / ListAgents / CountAgents over the socket.
	admin := agentv1.NewAgentClient(h.localConn())
	a, err := admin.GetAgent(ctx, &agentv1.GetAgentRequest{Id: &types.SPIFFEID{TrustDomain: td.Name(), Path: wantID.Path()}})
	if err != nil {
		t.Fatalf("GetAgent: %v", err)
	}
	if a.AttestationType != "join_token" || a.X509SvidSerialNumber != leaf.SerialNumber.String() || a.Banned {
		t.Fatalf("GetAgent = %v", a)
	}
	list, err := admin.ListAgents(ctx, &agentv1.ListAgentsRequest{Filter: &agentv1.ListAgentsRequest_Filter{ByAttestationType: "join_token", ByBanned: wrapperspb.Bool(false)}})
	if err != nil || len(list.Agents) != 1 {
		t.Fatalf("ListAgents = %v, %v", list, err)
	}
	cnt, err := admin.CountAgents(ctx, &agentv1.CountAgentsRequest{Filter: &agentv1.CountAgentsRequest_Filter{ByBanned: wrapperspb.Bool(true)}})
	if err != nil || cnt.Count != 0 {
		t.Fatalf("CountAgents(banned) = %v, %v", cnt, err)
	}
}

func TestJoinTokenExpired(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	token := h.createToken(&agentv1.CreateJoinTokenRequest{Ttl: 60})
	h.apiClk.Add(61 * time.Second)
	_, err := h.attest(h.anonConn(), token, newKey(t))
	requireCode(t, err, codes.InvalidArgument)
	if !strings.Contains(status.Convert(err).Message(), "expired") {
		t.Fatalf("error = %v, want join token expired", err)
	}
	// An expired token is consumed too.
	_, err = h.attest(h.anonConn(), token, newKey(t))
	requireCode(t, err, codes.InvalidArgument)
	if !strings.Contains(status.Convert(err).Message(), "does not exist") {
		t.Fatalf("error = %v", err)
	}
}

func TestCreateJoinTokenValidation(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	c := agentv1.NewAgentClient(h.localConn())
	ctx := context.Background()
	for name, req := range map[string]*agentv1.CreateJoinTokenRequest{
		"negative ttl":       {Ttl: -1},
		"bad token chars":    {Ttl: 60, Token: "a/b"},
		"agent id elsewhere": {Ttl: 60, AgentId: &types.SPIFFEID{TrustDomain: "other.org", Path: "/x"}},
		"reserved agent id":  {Ttl: 60, AgentId: &types.SPIFFEID{TrustDomain: td.Name(), Path: "/spire/agent/x"}},
	} {
		_, err := c.CreateJoinToken(ctx, req)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: got %v, want InvalidArgument", name, err)
		}
	}
	// ttl 0 defaults to 600 s.
	jt, err := c.CreateJoinToken(ctx, &agentv1.CreateJoinTokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if want := h.apiClk.Now().Add(600 * time.Second).Unix(); jt.ExpiresAt != want {
		t.Fatalf("expires_at = %d, want %d", jt.ExpiresAt, want)
	}
	// A custom token must be unique.
	if _, err := c.CreateJoinToken(ctx, &agentv1.CreateJoinTokenRequest{Ttl: 60, Token: "custom-1"}); err != nil {
		t.Fatal(err)
	}
	_, err = c.CreateJoinToken(ctx, &agentv1.CreateJoinTokenRequest{Ttl: 60, Token: "custom-1"})
	requireCode(t, err, codes.AlreadyExists)
}

func TestJoinTokenAliasEntry(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	token := h.createToken(&agentv1.CreateJoinTokenRequest{Ttl: 600, AgentId: &types.SPIFFEID{TrustDomain: td.Name(), Path: "/node/edge-1"}})
	joinID := "spiffe://example.org/spire/agent/join_token/" + token

	entries, _, err := h.ds.ListEntries(ctx, datastore.EntryFilter{ByParentID: joinID}, datastore.Page{})
	if err != nil || len(entries) != 1 {
		t.Fatalf("alias entries = %v, %v", entries, err)
	}
	alias := entries[0]
	if alias.SPIFFEID != "spiffe://example.org/node/edge-1" || len(alias.Selectors) != 1 ||
		alias.Selectors[0] != (selector.Selector{Type: "spiffe_id", Value: joinID}) {
		t.Fatalf("alias entry = %+v", alias)
	}

	// A workload under the alias is authorized for the agent.
	wl := h.createEntry(&datastore.Entry{SPIFFEID: "spiffe://example.org/workload/a", ParentID: alias.SPIFFEID,
		Selectors: []selector.Selector{{Type: "unix", Value: "uid:1000"}}})
	key := newKey(t)
	svid, err := h.attest(h.anonConn(), token, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.cache.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := svidv1.NewSVIDClient(h.svidConn(svid)).BatchNewX509SVID(ctx, &svidv1.BatchNewX509SVIDRequest{
		Params: []*svidv1.NewX509SVIDParams{{EntryId: wl.ID, Csr: csrFor(t, newKey(t))}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if c := resp.Results[0].GetStatus().GetCode(); c != int32(codes.OK) {
		t.Fatalf("status = %v", resp.Results[0].GetStatus())
	}
}

func TestRenewAgentPromotesNewSerial(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	key := newKey(t)
	svid, err := h.attest(h.anonConn(), h.createToken(&agentv1.CreateJoinTokenRequest{}), key)
	if err != nil {
		t.Fatal(err)
	}
	oldSerial := svid.Certificates[0].SerialNumber.String()
	c := agentv1.NewAgentClient(h.svidConn(svid))

	// Bad CSRs are rejected.
	_, err = c.RenewAgent(ctx, &agentv1.RenewAgentRequest{Params: &agentv1.AgentX509SVIDParams{Csr: []byte("junk")}})
	requireCode(t, err, codes.InvalidArgument)
	_, err = c.RenewAgent(ctx, &agentv1.RenewAgentRequest{})
	requireCode(t, err, codes.InvalidArgument)

	newKey2 := newKey(t)
	resp, err := c.RenewAgent(ctx, &agentv1.RenewAgentRequest{Params: &agentv1.AgentX509SVIDParams{Csr: csrFor(t, newKey2)}})
	if err != nil {
		t.Fatalf("RenewAgent: %v", err)
	}
	renewed, err := svidFromChain(resp.Svid.CertChain, newKey2)
	if err != nil {
		t.Fatal(err)
	}
	if renewed.ID != svid.ID {
		t.Fatalf("renewed ID %s != %s", renewed.ID, svid.ID)
	}
	if _, _, err := x509svid.Verify(renewed.Certificates, h.bundle()); err != nil {
		t.Fatalf("renewed SVID does not verify: %v", err)
	}
	newSerial := renewed.Certificates[0].SerialNumber.String()
	node, _ := h.ds.GetNode(ctx, svid.ID.String())
	if node.CertSerial != oldSerial || node.NewCertSerial != newSerial {
		t.Fatalf("after renew: node serials %q/%q, want %q/%q", node.CertSerial, node.NewCertSerial, oldSerial, newSerial)
	}

	// First use of the new SVID makes it current.
	if _, err := agentv1.NewAgentClient(h.svidConn(renewed)).PostStatus(ctx, &agentv1.PostStatusRequest{AgentVersion: "1.12.0"}); err != nil {
		t.Fatalf("PostStatus with renewed SVID: %v", err)
	}
	node, _ = h.ds.GetNode(ctx, svid.ID.String())
	if node.CertSerial != newSerial || node.NewCertSerial != "" {
		t.Fatalf("after first use: node serials %q/%q, want %q/\"\"", node.CertSerial, node.NewCertSerial, newSerial)
	}
	// The old SVID is no longer active.
	_, err = agentv1.NewAgentClient(h.svidConn(svid)).PostStatus(ctx, &agentv1.PostStatusRequest{})
	requireCode(t, err, codes.PermissionDenied)
	if r := deniedReason(err); r != types.PermissionDeniedDetails_AGENT_NOT_ACTIVE {
		t.Fatalf("reason = %v, want AGENT_NOT_ACTIVE", r)
	}
}

func TestBanAndDeleteAgent(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	const token = "fixed-token-1"
	h.createToken(&agentv1.CreateJoinTokenRequest{Token: token})
	key := newKey(t)
	svid, err := h.attest(h.anonConn(), token, key)
	if err != nil {
		t.Fatal(err)
	}
	wl := h.createEntry(&datastore.Entry{SPIFFEID: "spiffe://example.org/w", ParentID: svid.ID.String(),
		Selectors: []selector.Selector{{Type: "unix", Value: "uid:1"}}})

	conn := h.svidConn(svid)
	agentClient := agentv1.NewAgentClient(conn)
	svidClient := svidv1.NewSVIDClient(conn)
	entryClient := entryv1.NewEntryClient(conn)
	// Before the ban the agent can fetch SVIDs.
	if _, err := svidClient.BatchNewX509SVID(ctx, &svidv1.BatchNewX509SVIDRequest{Params: []*svidv1.NewX509SVIDParams{{EntryId: wl.ID, Csr: csrFor(t, newKey(t))}}}); err != nil {
		t.Fatal(err)
	}

	admin := agentv1.NewAgentClient(h.localConn())
	agentID := &types.SPIFFEID{TrustDomain: td.Name(), Path: svid.ID.Path()}
	if _, err := admin.BanAgent(ctx, &agentv1.BanAgentRequest{Id: agentID}); err != nil {
		t.Fatalf("BanAgent: %v", err)
	}
	node, _ := h.ds.GetNode(ctx, svid.ID.String())
	if !node.Banned() {
		t.Fatalf("node not banned: %+v", node)
	}

	_, err = agentClient.RenewAgent(ctx, &agentv1.RenewAgentRequest{Params: &agentv1.AgentX509SVIDParams{Csr: csrFor(t, key)}})
	requireCode(t, err, codes.PermissionDenied)
	if r := deniedReason(err); r != types.PermissionDeniedDetails_AGENT_BANNED {
		t.Fatalf("reason = %v, want AGENT_BANNED", r)
	}
	_, err = svidClient.BatchNewX509SVID(ctx, &svidv1.BatchNewX509SVIDRequest{Params: []*svidv1.NewX509SVIDParams{{EntryId: wl.ID, Csr: csrFor(t, newKey(t))}}})
	requireCode(t, err, codes.PermissionDenied)
	_, err = svidClient.NewJWTSVID(ctx, &svidv1.NewJWTSVIDRequest{EntryId: wl.ID, Audience: []string{"a"}})
	requireCode(t, err, codes.PermissionDenied)
	_, err = svidClient.MintX509SVID(ctx, &svidv1.MintX509SVIDRequest{Csr: csrFor(t, newKey(t), "spiffe://example.org/x")})
	requireCode(t, err, codes.PermissionDenied)
	sync, err := entryClient.SyncAuthorizedEntries(ctx)
	if err == nil {
		_ = sync.Send(&entryv1.SyncAuthorizedEntriesRequest{})
		_, err = sync.Recv()
	}
	requireCode(t, err, codes.PermissionDenied)

	// A banned agent cannot re-attest (same custom token re-issued).
	h.createToken(&agentv1.CreateJoinTokenRequest{Token: token})
	_, err = h.attest(h.anonConn(), token, newKey(t))
	requireCode(t, err, codes.PermissionDenied)

	// After deletion it can.
	if _, err := admin.DeleteAgent(ctx, &agentv1.DeleteAgentRequest{Id: agentID}); err != nil {
		t.Fatalf("DeleteAgent: %v", err)
	}
	_, err = admin.GetAgent(ctx, &agentv1.GetAgentRequest{Id: agentID})
	requireCode(t, err, codes.NotFound)
	_, err = agentClient.PostStatus(ctx, &agentv1.PostStatusRequest{})
	requireCode(t, err, codes.PermissionDenied)
	if r := deniedReason(err); r != types.PermissionDeniedDetails_AGENT_NOT_ATTESTED {
		t.Fatalf("reason = %v, want AGENT_NOT_ATTESTED", r)
	}
	_, err = admin.DeleteAgent(ctx, &agentv1.DeleteAgentRequest{Id: agentID})
	requireCode(t, err, codes.NotFound)
	// The banned agent's refused attempt did not consume the re-issued token.
	if _, err := h.attest(h.anonConn(), token, newKey(t)); err != nil {
		t.Fatalf("re-attest after delete: %v", err)
	}
	// Invalid agent IDs are refused.
	_, err = admin.BanAgent(ctx, &agentv1.BanAgentRequest{Id: &types.SPIFFEID{TrustDomain: td.Name(), Path: "/workload"}})
	requireCode(t, err, codes.InvalidArgument)
}

func TestAdminAuthorizationOverTCP(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()

	// No client certificate.
	_, err := agentv1.NewAgentClient(h.anonConn()).ListAgents(ctx, &agentv1.ListAgentsRequest{})
	requireCode(t, err, codes.PermissionDenied)
	_, err = agentv1.NewAgentClient(h.anonConn()).CreateJoinToken(ctx, &agentv1.CreateJoinTokenRequest{Ttl: 60})
	requireCode(t, err, codes.PermissionDenied)
	// GetBundle is open to anyone.
	if _, err := bundlev1.NewBundleClient(h.anonConn()).GetBundle(ctx, &bundlev1.GetBundleRequest{}); err != nil {
		t.Fatalf("GetBundle without SVID: %v", err)
	}

	// An agent is not an admin.
	agentSVID, err := h.attest(h.anonConn(), h.createToken(&agentv1.CreateJoinTokenRequest{}), newKey(t))
	if err != nil {
		t.Fatal(err)
	}
	_, err = agentv1.NewAgentClient(h.svidConn(agentSVID)).ListAgents(ctx, &agentv1.ListAgentsRequest{})
	requireCode(t, err, codes.PermissionDenied)

	// A workload SVID without an admin entry is not an admin either.
	adminID := spiffeid.RequireFromPath(td, "/ops/admin")
	adminSVID := h.mintSVID(adminID)
	_, err = agentv1.NewAgentClient(h.svidConn(adminSVID)).ListAgents(ctx, &agentv1.ListAgentsRequest{})
	requireCode(t, err, codes.PermissionDenied)
	// Nor an agent: RenewAgent is refused.
	_, err = agentv1.NewAgentClient(h.svidConn(adminSVID)).RenewAgent(ctx, &agentv1.RenewAgentRequest{Params: &agentv1.AgentX509SVIDParams{Csr: csrFor(t, newKey(t))}})
	requireCode(t, err, codes.PermissionDenied)

	h.createEntry(&datastore.Entry{SPIFFEID: adminID.String(), ParentID: agentSVID.ID.String(), Admin: true,
		Selectors: []selector.Selector{{Type: "unix", Value: "uid:0"}}})
	conn := h.svidConn(adminSVID)
	list, err := agentv1.NewAgentClient(conn).ListAgents(ctx, &agentv1.ListAgentsRequest{})
	if err != nil {
		t.Fatalf("ListAgents with admin SVID: %v", err)
	}
	if len(list.Agents) != 1 {
		t.Fatalf("agents = %d, want 1", len(list.Agents))
	}
	if _, err := agentv1.NewAgentClient(conn).CreateJoinToken(ctx, &agentv1.CreateJoinTokenRequest{Ttl: 60}); err != nil {
		t.Fatalf("CreateJoinToken with admin SVID: %v", err)
	}
	// Admin can mint.
	mresp, err := svidv1.NewSVIDClient(conn).MintX509SVID(ctx, &svidv1.MintX509SVIDRequest{Csr: csrFor(t, newKey(t), "spiffe://example.org/minted")})
	if err != nil {
		t.Fatalf("MintX509SVID: %v", err)
	}
	if got := mresp.Svid.Id.Path; got != "/minted" {
		t.Fatalf("minted path = %q", got)
	}
	// Health is local only.
	_, err = grpc_health_v1.NewHealthClient(conn).Check(ctx, &grpc_health_v1.HealthCheckRequest{})
	if err == nil {
		t.Fatal("health check over TCP succeeded")
	}
}

func TestClientCertFromOtherCAIsRejected(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	other := newHarness(t, harnessOpts{}) // a different CA for the same trust domain
	forged := other.mintSVID(spiffeid.RequireFromPath(td, "/ops/admin"))
	_, err := agentv1.NewAgentClient(h.svidConn(forged)).ListAgents(context.Background(), &agentv1.ListAgentsRequest{})
	if err == nil {
		t.Fatal("a client certificate from a foreign CA was accepted")
	}
}

func TestSocket(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	fi, err := os.Stat(h.sockPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode = %v, want socket 0600", fi.Mode())
	}
	di, err := os.Stat(filepath.Dir(h.sockPath))
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Fatalf("socket dir mode = %v, want 0700", di.Mode().Perm())
	}
	entries, _ := os.ReadDir(filepath.Dir(h.sockPath))
	if len(entries) != 1 {
		t.Fatalf("socket dir holds %d files, want only the socket", len(entries))
	}

	resp, err := grpc_health_v1.NewHealthClient(h.localConn()).Check(context.Background(), &grpc_health_v1.HealthCheckRequest{})
	if err != nil || resp.Status != grpc_health_v1.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v", resp, err)
	}
	h.stop()
	if _, err := os.Stat(h.sockPath); !os.IsNotExist(err) {
		t.Fatalf("socket not removed on stop: %v", err)
	}
}

func TestBatchNewX509SVIDAuthorization(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	agentSVID, err := h.attest(h.anonConn(), h.createToken(&agentv1.CreateJoinTokenRequest{}), newKey(t))
	if err != nil {
		t.Fatal(err)
	}
	mine := h.createEntry(&datastore.Entry{SPIFFEID: "spiffe://example.org/web", ParentID: agentSVID.ID.String(),
		Selectors: []selector.Selector{{Type: "unix", Value: "uid:1000"}}, DNSNames: []string{"web.example.org"}, X509SVIDTTL: 600})
	child := h.createEntry(&datastore.Entry{SPIFFEID: "spiffe://example.org/web/child", ParentID: mine.SPIFFEID,
		Selectors: []selector.Selector{{Type: "unix", Value: "uid:1001"}}})
	theirs := h.createEntry(&datastore.Entry{SPIFFEID: "spiffe://example.org/db", ParentID: "spiffe://example.org/spire/agent/other",
		Selectors: []selector.Selector{{Type: "unix", Value: "uid:1000"}}})

	wkey := newKey(t)
	bad := csrFor(t, newKey(t))
	bad[len(bad)-3] ^= 0xff // break the signature
	c := svidv1.NewSVIDClient(h.svidConn(agentSVID))
	resp, err := c.BatchNewX509SVID(ctx, &svidv1.BatchNewX509SVIDRequest{Params: []*svidv1.NewX509SVIDParams{
		{EntryId: mine.ID, Csr: csrFor(t, wkey)},
		{EntryId: theirs.ID, Csr: csrFor(t, newKey(t))},
		{EntryId: "no-such-entry", Csr: csrFor(t, newKey(t))},
		{EntryId: child.ID, Csr: []byte("not a csr")},
		{EntryId: child.ID, Csr: bad},
		{EntryId: "", Csr: csrFor(t, newKey(t))},
		{EntryId: child.ID, Csr: csrFor(t, newKey(t))},
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := []codes.Code{codes.OK, codes.NotFound, codes.NotFound, codes.InvalidArgument, codes.InvalidArgument, codes.InvalidArgument, codes.OK}
	if len(resp.Results) != len(want) {
		t.Fatalf("%d results, want %d", len(resp.Results), len(want))
	}
	for i, r := range resp.Results {
		if got := codes.Code(r.GetStatus().GetCode()); got != want[i] {
			t.Errorf("result %d: %v %q, want %v", i, got, r.GetStatus().GetMessage(), want[i])
		}
		if want[i] != codes.OK && r.Svid != nil {
			t.Errorf("result %d: SVID returned with an error status", i)
		}
	}
	svid, err := svidFromChain(resp.Results[0].Svid.CertChain, wkey)
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := x509svid.Verify(svid.Certificates, h.bundle())
	if err != nil || id.String() != mine.SPIFFEID {
		t.Fatalf("workload SVID: %v %v", id, err)
	}
	leaf := svid.Certificates[0]
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "web.example.org" {
		t.Fatalf("DNS names = %v", leaf.DNSNames)
	}
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d > 11*time.Minute {
		t.Fatalf("lifetime %s ignores the entry TTL", d)
	}

	_, err = c.BatchNewX509SVID(ctx, &svidv1.BatchNewX509SVIDRequest{})
	requireCode(t, err, codes.InvalidArgument)

	// JWT-SVIDs.
	jresp, err := c.NewJWTSVID(ctx, &svidv1.NewJWTSVIDRequest{EntryId: mine.ID, Audience: []string{"aud1"}})
	if err != nil {
		t.Fatalf("NewJWTSVID: %v", err)
	}
	tok, err := jwtsvid.ParseInsecure(jresp.Svid.Token, []string{"aud1"})
	if err != nil || tok.ID.String() != mine.SPIFFEID {
		t.Fatalf("JWT-SVID: %v %v", tok, err)
	}
	if jresp.Svid.ExpiresAt != tok.Expiry.Unix() || jresp.Svid.IssuedAt == 0 {
		t.Fatalf("JWT-SVID times: resp %d/%d, token exp %d", jresp.Svid.IssuedAt, jresp.Svid.ExpiresAt, tok.Expiry.Unix())
	}
	_, err = c.NewJWTSVID(ctx, &svidv1.NewJWTSVIDRequest{EntryId: mine.ID})
	requireCode(t, err, codes.InvalidArgument)
	_, err = c.NewJWTSVID(ctx, &svidv1.NewJWTSVIDRequest{EntryId: theirs.ID, Audience: []string{"a"}})
	requireCode(t, err, codes.NotFound)
}

func TestMintValidation(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	c := svidv1.NewSVIDClient(h.localConn())
	for name, csr := range map[string][]byte{
		"no URI":        csrFor(t, newKey(t)),
		"two URIs":      csrFor(t, newKey(t), "spiffe://example.org/a", "spiffe://example.org/b"),
		"foreign td":    csrFor(t, newKey(t), "spiffe://other.org/a"),
		"reserved path": csrFor(t, newKey(t), "spiffe://example.org/spire/agent/x"),
		"garbage":       []byte("garbage"),
		"empty":         nil,
	} {
		_, err := c.MintX509SVID(ctx, &svidv1.MintX509SVIDRequest{Csr: csr})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	resp, err := c.MintJWTSVID(ctx, &svidv1.MintJWTSVIDRequest{Id: &types.SPIFFEID{TrustDomain: td.Name(), Path: "/j"}, Audience: []string{"x"}, Ttl: 60})
	if err != nil {
		t.Fatalf("MintJWTSVID: %v", err)
	}
	if resp.Svid.ExpiresAt-resp.Svid.IssuedAt > 61 {
		t.Fatalf("JWT lifetime %d s ignores ttl", resp.Svid.ExpiresAt-resp.Svid.IssuedAt)
	}
	_, err = c.MintJWTSVID(ctx, &svidv1.MintJWTSVIDRequest{Id: &types.SPIFFEID{TrustDomain: td.Name(), Path: "/j"}})
	requireCode(t, err, codes.InvalidArgument)
}

func TestNewDownstreamX509CA(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	agentSVID, err := h.attest(h.anonConn(), h.createToken(&agentv1.CreateJoinTokenRequest{}), newKey(t))
	if err != nil {
		t.Fatal(err)
	}
	downID := spiffeid.RequireFromPath(td, "/nested/server")
	downSVID := h.mintSVID(downID)
	req := &svidv1.NewDownstreamX509CARequest{Csr: csrFor(t, newKey(t))}

	_, err = svidv1.NewSVIDClient(h.svidConn(downSVID)).NewDownstreamX509CA(ctx, req)
	requireCode(t, err, codes.PermissionDenied)

	h.createEntry(&datastore.Entry{SPIFFEID: downID.String(), ParentID: agentSVID.ID.String(), Downstream: true, X509SVIDTTL: 3600,
		Selectors: []selector.Selector{{Type: "unix", Value: "uid:0"}}})
	resp, err := svidv1.NewSVIDClient(h.svidConn(downSVID)).NewDownstreamX509CA(ctx, req)
	if err != nil {
		t.Fatalf("NewDownstreamX509CA: %v", err)
	}
	cert, err := x509.ParseCertificate(resp.CaCertChain[0])
	if err != nil {
		t.Fatal(err)
	}
	if !cert.IsCA {
		t.Fatal("downstream certificate is not a CA")
	}
	roots := x509.NewCertPool()
	for _, raw := range resp.X509Authorities {
		r, err := x509.ParseCertificate(raw)
		if err != nil {
			t.Fatal(err)
		}
		roots.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, raw := range resp.CaCertChain[1:] {
		c, _ := x509.ParseCertificate(raw)
		inter.AddCert(c)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("downstream CA does not chain to x509_authorities: %v", err)
	}
	if len(resp.X509Authorities) != len(h.ca.X509Authorities()) {
		t.Fatalf("x509_authorities = %d, want %d", len(resp.X509Authorities), len(h.ca.X509Authorities()))
	}
}

func TestBadAttestationRequests(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	token := h.createToken(&agentv1.CreateJoinTokenRequest{})
	conn := h.anonConn()
	key := newKey(t)
	bad := csrFor(t, key)
	bad[len(bad)-3] ^= 0xff
	for name, tc := range map[string]struct {
		typ     string
		payload []byte
		csr     []byte
		want    codes.Code
	}{
		"garbage CSR":       {"join_token", []byte(token), []byte("junk"), codes.InvalidArgument},
		"bad signature CSR": {"join_token", []byte(token), bad, codes.InvalidArgument},
		"no CSR":            {"join_token", []byte(token), nil, codes.InvalidArgument},
		"no payload":        {"join_token", nil, csrFor(t, key), codes.InvalidArgument},
		"unknown type":      {"tpm_devid", []byte("x"), csrFor(t, key), codes.FailedPrecondition},
		"token with slash":  {"join_token", []byte("../x"), csrFor(t, key), codes.InvalidArgument},
	} {
		_, err := attestWith(conn, tc.typ, tc.payload, tc.csr, key)
		if status.Code(err) != tc.want {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	// None of the bad requests consumed the token.
	if _, err := h.attest(conn, token, key); err != nil {
		t.Fatalf("token was burnt by a bad request: %v", err)
	}
}
