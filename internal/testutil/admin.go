package testutil

import (
	"context"
	"crypto/x509"
	"os"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"

	"github.com/sigil-spiffe/sigil/internal/adminclient"
)

// AdminTimeout bounds each admin call.
const AdminTimeout = 15 * time.Second

// JoinTokenTTL is the lifetime of the join tokens Admin creates.
const JoinTokenTTL = 10 * time.Minute

// Admin drives a server's admin API (spire-api-sdk) over its unix socket:
// the test harnesses' one admin helper, for processes (Server.Admin) and
// in-process servers (inproc) alike. It wraps adminclient (what
// `sigil-server dev` uses): its methods take the test and fail it on an
// error, each call bounded by AdminTimeout. The embedded Client's fields
// (Agent, Entry, Bundle, SVID service clients, TD) serve calls Admin has no
// helper for, and a.Client's context methods serve goroutines other than
// the test's.
type Admin struct {
	*adminclient.Client
}

// DialAdmin connects to the admin socket; the connection is closed on
// cleanup.
func DialAdmin(t testing.TB, socketPath string, td spiffeid.TrustDomain) *Admin {
	t.Helper()
	c, err := adminclient.Dial(socketPath, td)
	if err != nil {
		t.Fatalf("dial admin socket: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &Admin{Client: c}
}

func ctxTimeout() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), AdminTimeout)
}

// CreateJoinToken creates a join token (JoinTokenTTL) for agentID; a zero
// agentID leaves the server's default, JoinTokenAgentID(token).
func (a *Admin) CreateJoinToken(t testing.TB, agentID spiffeid.ID) string {
	t.Helper()
	ctx, cancel := ctxTimeout()
	defer cancel()
	tok, err := a.Client.CreateJoinToken(ctx, agentID, JoinTokenTTL)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// CreateEntry registers id under parent with selectors written
// "type:value" (e.g. "unix:uid:0") and returns the entry ID.
func (a *Admin) CreateEntry(t testing.TB, id, parent spiffeid.ID, selectors ...string) string {
	t.Helper()
	e, err := adminclient.NewEntry(id, parent, selectors...)
	if err != nil {
		t.Fatal(err)
	}
	return a.CreateEntries(t, e)[0]
}

// CreateEntries creates entries (built by the caller, e.g. with
// adminclient.NewEntry and extra fields) in one batch and returns their
// IDs; a result that is not OK fails the test.
func (a *Admin) CreateEntries(t testing.TB, entries ...*types.Entry) []string {
	t.Helper()
	ctx, cancel := ctxTimeout()
	defer cancel()
	ids, err := a.Client.CreateEntries(ctx, entries...)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// DeleteEntries deletes entries by ID.
func (a *Admin) DeleteEntries(t testing.TB, ids ...string) {
	t.Helper()
	ctx, cancel := ctxTimeout()
	defer cancel()
	if err := a.Client.DeleteEntries(ctx, ids...); err != nil {
		t.Fatal(err)
	}
}

// ListEntries lists every registration entry.
func (a *Admin) ListEntries(t testing.TB) []*types.Entry {
	t.Helper()
	ctx, cancel := ctxTimeout()
	defer cancel()
	all, err := a.Client.ListEntries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return all
}

// ListAgents lists every attested agent.
func (a *Admin) ListAgents(t testing.TB) []*types.Agent {
	t.Helper()
	ctx, cancel := ctxTimeout()
	defer cancel()
	all, err := a.Client.ListAgents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return all
}

// BanAgent bans an agent (agent ban).
func (a *Admin) BanAgent(t testing.TB, id spiffeid.ID) {
	t.Helper()
	ctx, cancel := ctxTimeout()
	defer cancel()
	if err := a.Client.BanAgent(ctx, id); err != nil {
		t.Fatal(err)
	}
}

// DeleteAgent deletes an agent's record (agent evict).
func (a *Admin) DeleteAgent(t testing.TB, id spiffeid.ID) {
	t.Helper()
	ctx, cancel := ctxTimeout()
	defer cancel()
	if err := a.Client.DeleteAgent(ctx, id); err != nil {
		t.Fatal(err)
	}
}

// BundleCerts returns the server's X.509 authorities.
func (a *Admin) BundleCerts(t testing.TB) []*x509.Certificate {
	t.Helper()
	ctx, cancel := ctxTimeout()
	defer cancel()
	certs, err := a.Client.BundleCerts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

// BundlePEM returns the server's X.509 authorities as PEM, usable as an
// agent's trust_bundle_path.
func (a *Admin) BundlePEM(t testing.TB) []byte {
	t.Helper()
	ctx, cancel := ctxTimeout()
	defer cancel()
	out, err := a.Client.BundlePEM(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// WriteBundlePEM writes BundlePEM to path and returns path.
func (a *Admin) WriteBundlePEM(t testing.TB, path string) string {
	t.Helper()
	if err := os.WriteFile(path, a.BundlePEM(t), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// SetFederatedBundle creates or replaces the bundle of a federated trust
// domain (bundle set), as an operator or a federation refresher does.
func (a *Admin) SetFederatedBundle(t testing.TB, b *spiffebundle.Bundle) {
	t.Helper()
	ctx, cancel := ctxTimeout()
	defer cancel()
	if err := a.Client.SetFederatedBundle(ctx, b); err != nil {
		t.Fatal(err)
	}
}

// IDString formats a proto SPIFFE ID.
func IDString(id *types.SPIFFEID) string { return adminclient.IDString(id) }

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
