package manager_test

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// TestTaintedAuthorityRenewsSVIDs: when the server marks the authorities
// of its bundle tainted (SPIRE's "localauthority x509|jwt taint", the step
// before revoking them; a SPIRE server is emulated by marking the bundle
// a sigil-server sends), the agent renews the workload SVIDs and its own
// SVID they signed and drops the JWT-SVIDs signed with a tainted key, at
// once, as SPIRE's agent does, and only once per taint: a later sync with
// the same taints renews nothing. Without this a sigil-agent under
// spire-server lost its identity when the tainted CA was revoked.
func TestTaintedAuthorityRenewsSVIDs(t *testing.T) {
	srv := newTestServer(t, serverOpts{})
	var tainted atomic.Bool
	taint := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if b, ok := reply.(*types.Bundle); ok && err == nil && tainted.Load() && method == "/spire.api.server.bundle.v1.Bundle/GetBundle" {
			for _, a := range b.X509Authorities {
				a.Tainted = true
			}
			for _, k := range b.JwtAuthorities {
				k.Tainted = true
			}
		}
		return err
	}
	token, agentID := srv.createToken()
	wl := spiffeid.RequireFromPath(td, "/workload/taint")
	srv.createEntry(agentID, wl.Path(), "7100")
	a := startAgent(t, srv, t.TempDir(), agentOpts{token: token, dialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(taint)}})
	first := a.waitIdentity("7100", wl).SVID[0]
	agentSVID := a.m.AgentSVID().Certificates[0]
	jwt, err := a.m.MintJWTSVID(context.Background(), a.waitIdentity("7100", wl).Entry, []string{"taint"})
	if err != nil {
		t.Fatal(err)
	}

	tainted.Store(true)
	srv.appendRoot(testca.SelfSigned(t, testca.Subject("unrelated root"))) // a bundle change: the agent syncs
	renewed := a.waitUpdate("7100", func(u *cache.WorkloadUpdate) bool {
		return len(u.Identities) == 1 && !u.Identities[0].SVID[0].Equal(first)
	}).Identities[0].SVID[0]
	eventually(t, "the agent SVID renewed", func() bool {
		s := a.m.AgentSVID()
		return s != nil && !s.Certificates[0].Equal(agentSVID)
	})
	// The renewal restarts the session: minting waits for the next one.
	entry := a.waitIdentity("7100", wl).Entry
	var again string
	eventually(t, "a JWT-SVID minted after the renewal", func() bool {
		again, err = a.m.MintJWTSVID(context.Background(), entry, []string{"taint"})
		return err == nil
	})
	if again == jwt {
		t.Fatal("the cached JWT-SVID signed with a tainted key is still served")
	}

	// The same taints again: nothing more is renewed.
	renewedAgent := a.m.AgentSVID().Certificates[0]
	synced := a.m.Status().LastSync
	srv.appendRoot(testca.SelfSigned(t, testca.Subject("another unrelated root")))
	eventually(t, "another sync", func() bool { return a.m.Status().LastSync.After(synced) })
	if got := a.waitIdentity("7100", wl).SVID[0]; !got.Equal(renewed) {
		t.Fatal("the workload SVID was renewed again for a taint already processed")
	}
	if !a.m.AgentSVID().Certificates[0].Equal(renewedAgent) {
		t.Fatal("the agent SVID was renewed again for a taint already processed")
	}
}
