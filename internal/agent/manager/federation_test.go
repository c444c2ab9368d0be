package manager_test

import (
	"context"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// TestFederatedBundleRefreshTime: the agent's status gives each federated
// bundle's update time: when it received it, until the server reports
// that it fetched the bundle from its trust domain's endpoint; from then
// on that time, learnt at the next sync even when the content is the same.
func TestFederatedBundleRefreshTime(t *testing.T) {
	srv := newTestServer(t, serverOpts{})
	token, agentID := srv.createToken()
	fed := spiffeid.RequireTrustDomainFromString("fed.example")
	fedRoot := testca.SelfSigned(t, testca.Subject("federated root"))
	srv.setFederatedBundle(fed.Name(), fedRoot)
	srv.createEntry(agentID, "/workload/fed", "2001", fed.Name())
	before := time.Now()
	a := startAgent(t, srv, t.TempDir(), agentOpts{token: token})
	a.waitUpdate("2001", func(u *cache.WorkloadUpdate) bool { return u.FederatedBundles[fed] != nil })
	got := a.m.Status().FederatedBundles
	if len(got) != 1 || got[0].TrustDomain != fed || got[0].UpdatedAt.Before(before.Truncate(time.Second)) || got[0].UpdatedAt.After(time.Now()) {
		t.Fatalf("federated bundles in the status %+v, want %s updated when it arrived (after %s)", got, fed, before)
	}

	// The server fetched it (same content) an hour ago; a bundle write
	// makes the agent sync again.
	refreshed := time.Now().Add(-time.Hour).Truncate(time.Second)
	if err := srv.ds.SetBundleRefreshed(context.Background(), fed.Name(), refreshed); err != nil {
		t.Fatal(err)
	}
	srv.setFederatedBundle(fed.Name(), fedRoot)
	eventually(t, "the server's refresh time in the agent's status", func() bool {
		got := a.m.Status().FederatedBundles
		return len(got) == 1 && got[0].UpdatedAt.Equal(refreshed)
	})
}

// TestFirstSVIDCarriesFederatedBundles: a new entry's first X509-SVID
// reaches its workloads together with the bundles of the trust domains it
// federates with, even when fetching a bundle takes longer than signing.
func TestFirstSVIDCarriesFederatedBundles(t *testing.T) {
	srv := newTestServer(t, serverOpts{})
	token, agentID := srv.createToken()
	fed := spiffeid.RequireTrustDomainFromString("fed.example")
	srv.setFederatedBundle(fed.Name(), testca.SelfSigned(t, testca.Subject("federated root")))
	srv.createEntry(agentID, "/workload/fed", "2001", fed.Name())
	slowFederated := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method == "/spire.api.server.bundle.v1.Bundle/GetFederatedBundle" {
			time.Sleep(300 * time.Millisecond)
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	a := startAgent(t, srv, t.TempDir(), agentOpts{token: token, dialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(slowFederated)}})
	u := a.waitUpdate("2001", func(u *cache.WorkloadUpdate) bool { return len(u.Identities) > 0 })
	if u.FederatedBundles[fed] == nil {
		t.Fatalf("the first update with an X509-SVID has no bundle of %s", fed)
	}
}
