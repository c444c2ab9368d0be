package testutil

import (
	"context"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
)

// AdminTimeout bounds each admin call.
const AdminTimeout = 15 * time.Second

// Admin drives a server's admin API (spire-api-sdk) over its unix socket.
type Admin struct {
	Conn   *grpc.ClientConn
	Agent  agentv1.AgentClient
	Entry  entryv1.EntryClient
	Bundle bundlev1.BundleClient
	TD     spiffeid.TrustDomain
}

// DialAdmin connects to the admin socket; the connection is closed on
// cleanup.
func DialAdmin(t testing.TB, socketPath string, td spiffeid.TrustDomain) *Admin {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socketPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial admin socket: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &Admin{
		Conn:   conn,
		Agent:  agentv1.NewAgentClient(conn),
		Entry:  entryv1.NewEntryClient(conn),
		Bundle: bundlev1.NewBundleClient(conn),
		TD:     td,
	}
}

func ctxTimeout() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), AdminTimeout)
}

func protoID(id spiffeid.ID) *types.SPIFFEID {
	return &types.SPIFFEID{TrustDomain: id.TrustDomain().Name(), Path: id.Path()}
}

// CreateJoinToken creates a 10-minute join token for agentID.
func (a *Admin) CreateJoinToken(t testing.TB, agentID spiffeid.ID) string {
	t.Helper()
	ctx, cancel := ctxTimeout()
	defer cancel()
	resp, err := a.Agent.CreateJoinToken(ctx, &agentv1.CreateJoinTokenRequest{Ttl: 600, AgentId: protoID(agentID)})
	if err != nil {
		t.Fatalf("create join token: %v", err)
	}
	return resp.GetValue()
}

// CreateEntry registers id under parent with selectors written
// "type:value" (e.g. "unix:uid:0") and returns the entry ID.
func (a *Admin) CreateEntry(t testing.TB, id, parent spiffeid.ID, selectors ...string) string {
	t.Helper()
	e := &types.Entry{SpiffeId: protoID(id), ParentId: protoID(parent)}
	for _, s := range selectors {
		typ, val, ok := strings.Cut(s, ":")
		if !ok {
			t.Fatalf("selector %q: want type:value", s)
		}
		e.Selectors = append(e.Selectors, &types.Selector{Type: typ, Value: val})
	}
	ctx, cancel := ctxTimeout()
	defer cancel()
	resp, err := a.Entry.BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{Entries: []*types.Entry{e}})
	if err != nil {
		t.Fatalf("create entry %s: %v", id, err)
	}
	r := resp.GetResults()[0]
	if r.GetStatus().GetCode() != int32(codes.OK) {
		t.Fatalf("create entry %s: %s", id, r.GetStatus().GetMessage())
	}
	return r.GetEntry().GetId()
}

// ListEntries lists every registration entry.
func (a *Admin) ListEntries(t testing.TB) []*types.Entry {
	t.Helper()
	var all []*types.Entry
	token := ""
	for {
		ctx, cancel := ctxTimeout()
		resp, err := a.Entry.ListEntries(ctx, &entryv1.ListEntriesRequest{PageSize: 500, PageToken: token})
		cancel()
		if err != nil {
			t.Fatalf("list entries: %v", err)
		}
		all = append(all, resp.GetEntries()...)
		if token = resp.GetNextPageToken(); token == "" {
			return all
		}
	}
}

// ListAgents lists every attested agent.
func (a *Admin) ListAgents(t testing.TB) []*types.Agent {
	t.Helper()
	var all []*types.Agent
	token := ""
	for {
		ctx, cancel := ctxTimeout()
		resp, err := a.Agent.ListAgents(ctx, &agentv1.ListAgentsRequest{PageSize: 500, PageToken: token})
		cancel()
		if err != nil {
			t.Fatalf("list agents: %v", err)
		}
		all = append(all, resp.GetAgents()...)
		if token = resp.GetNextPageToken(); token == "" {
			return all
		}
	}
}

// BanAgent bans an agent (agent ban).
func (a *Admin) BanAgent(t testing.TB, id spiffeid.ID) {
	t.Helper()
	ctx, cancel := ctxTimeout()
	defer cancel()
	if _, err := a.Agent.BanAgent(ctx, &agentv1.BanAgentRequest{Id: protoID(id)}); err != nil {
		t.Fatalf("ban agent %s: %v", id, err)
	}
}

// DeleteAgent deletes an agent's record (agent evict).
func (a *Admin) DeleteAgent(t testing.TB, id spiffeid.ID) {
	t.Helper()
	ctx, cancel := ctxTimeout()
	defer cancel()
	if _, err := a.Agent.DeleteAgent(ctx, &agentv1.DeleteAgentRequest{Id: protoID(id)}); err != nil {
		t.Fatalf("delete agent %s: %v", id, err)
	}
}

// JoinTokenAgentID is the agent ID a join token attests as
// (spiffe://<td>/spire/agent/join_token/<token>).
func (a *Admin) JoinTokenAgentID(token string) spiffeid.ID {
	return spiffeid.RequireFromSegments(a.TD, "spire", "agent", "join_token", token)
}

// BundlePEM returns the server's X.509 authorities as PEM, usable as an
// agent's trust_bundle_path.
func (a *Admin) BundlePEM(t testing.TB) []byte {
	t.Helper()
	ctx, cancel := ctxTimeout()
	defer cancel()
	b, err := a.Bundle.GetBundle(ctx, &bundlev1.GetBundleRequest{})
	if err != nil {
		t.Fatalf("get bundle: %v", err)
	}
	var out []byte
	for _, auth := range b.GetX509Authorities() {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: auth.GetAsn1()})...)
	}
	if len(out) == 0 {
		t.Fatal("server bundle has no X.509 authorities")
	}
	return out
}

// IDString formats a proto SPIFFE ID.
func IDString(id *types.SPIFFEID) string {
	return "spiffe://" + id.GetTrustDomain() + id.GetPath()
}

// Reset deletes every entry, every agent record and every federated bundle,
// so a scenario can run again on the same server from an empty state.
func (a *Admin) Reset(t testing.TB) {
	t.Helper()
	ctx, cancel := ctxTimeout()
	defer cancel()
	var ids []string
	for _, e := range a.ListEntries(t) {
		ids = append(ids, e.GetId())
	}
	if len(ids) > 0 {
		resp, err := a.Entry.BatchDeleteEntry(ctx, &entryv1.BatchDeleteEntryRequest{Ids: ids})
		if err != nil {
			t.Fatalf("delete entries: %v", err)
		}
		for _, r := range resp.GetResults() {
			// An alias entry may already be gone with its agent.
			if c := codes.Code(r.GetStatus().GetCode()); c != codes.OK && c != codes.NotFound {
				t.Fatalf("delete entry %s: %s", r.GetId(), r.GetStatus().GetMessage())
			}
		}
	}
	for _, ag := range a.ListAgents(t) {
		if _, err := a.Agent.DeleteAgent(ctx, &agentv1.DeleteAgentRequest{Id: ag.GetId()}); err != nil {
			t.Fatalf("delete agent %s: %v", IDString(ag.GetId()), err)
		}
	}
	var tds []string
	token := ""
	for {
		resp, err := a.Bundle.ListFederatedBundles(ctx, &bundlev1.ListFederatedBundlesRequest{PageToken: token})
		if err != nil {
			t.Fatalf("list federated bundles: %v", err)
		}
		for _, b := range resp.GetBundles() {
			tds = append(tds, b.GetTrustDomain())
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	if len(tds) > 0 {
		resp, err := a.Bundle.BatchDeleteFederatedBundle(ctx, &bundlev1.BatchDeleteFederatedBundleRequest{
			TrustDomains: tds, Mode: bundlev1.BatchDeleteFederatedBundleRequest_DISSOCIATE})
		if err != nil {
			t.Fatalf("delete federated bundles: %v", err)
		}
		for _, r := range resp.GetResults() {
			if r.GetStatus().GetCode() != int32(codes.OK) {
				t.Fatalf("delete federated bundle %s: %s", r.GetTrustDomain(), r.GetStatus().GetMessage())
			}
		}
	}
}
