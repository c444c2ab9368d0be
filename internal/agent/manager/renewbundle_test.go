package manager_test

import (
	"context"
	"crypto/x509"
	"math/big"
	"testing"
	"time"

	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	"google.golang.org/grpc"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// TestAgentRenewalTrustsRootsLearntInSession: the agent SVID is renewed
// against the trust bundle as it is at renewal, with the roots the
// session's syncs added, not as it was when the session began. A server
// whose next CA was published during the session and signs the renewed
// SVID (a CA rotation) otherwise had the renewal refused ("agent SVID does
// not chain to the trust bundle"): the agent dropped to degraded until the
// next session, and the roots it had learnt were dropped from its state.
// The next CA is emulated: published through the bundle API, and the
// renewed SVID it signs substituted for the server's answer.
func TestAgentRenewalTrustsRootsLearntInSession(t *testing.T) {
	clk := clock.NewFake(time.Now())
	srv := newTestServer(t, serverOpts{agentTTL: 4 * time.Hour, clock: clk})
	next := testca.New(t, testca.Subject("next CA"), testca.Validity(clk.Now().Add(-time.Hour), clk.Now().Add(48*time.Hour)))
	signedByNext := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if err := invoker(ctx, method, req, reply, cc, opts...); err != nil || method != "/spire.api.server.agent.v1.Agent/RenewAgent" {
			return err
		}
		csr, err := x509.ParseCertificateRequest(req.(*agentv1.RenewAgentRequest).GetParams().GetCsr())
		if err != nil {
			return err
		}
		resp := reply.(*agentv1.RenewAgentResponse)
		cur, err := x509.ParseCertificate(resp.GetSvid().GetCertChain()[0])
		if err != nil {
			return err
		}
		leaf := testca.Sign(t, &x509.Certificate{SerialNumber: big.NewInt(clk.Now().UnixNano()), URIs: cur.URIs,
			NotBefore: cur.NotBefore, NotAfter: cur.NotAfter, KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, next.Cert, csr.PublicKey, next.Key)
		resp.Svid.CertChain = [][]byte{leaf.Raw}
		return nil
	}
	token, _ := srv.createToken()
	metrics := &recordMetrics{}
	a := startAgent(t, srv, t.TempDir(), agentOpts{token: token, clock: clk, metrics: metrics,
		dialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(signedByNext)}})
	eventually(t, "the first sync", func() bool { _, _, rounds := metrics.counts(); return rounds > 0 })

	// The next CA is published: the running session learns it.
	_, _, rounds := metrics.counts()
	srv.appendRoot(next.Cert)
	eventually(t, "the next CA in the agent's bundle", func() bool {
		b, ok := a.cache.Bundle(td)
		_, _, r := metrics.counts()
		return ok && containsRoot(b.X509Authorities(), next.Cert) && r > rounds
	})

	// Past the agent SVID's half-life: renewed in the same session.
	clk.Add(150 * time.Minute)
	eventually(t, "an agent SVID signed by the next CA", func() bool {
		s := a.m.AgentSVID()
		return s != nil && s.Certificates[0].CheckSignatureFrom(next.Cert) == nil
	})
	if n := metrics.agentFailures(); n != 0 {
		t.Fatalf("%d agent SVID renewals failed before one succeeded", n)
	}
}

func containsRoot(cs []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range cs {
		if x.Equal(c) {
			return true
		}
	}
	return false
}
