package manager_test

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"

	"github.com/sigil-spiffe/sigil/internal/adminclient"
	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore/sqlstore"
	agentapi "github.com/sigil-spiffe/sigil/internal/server/api/agent"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/serverstack"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// testServer is the real server stack (testutil/serverstack): SQLite in a
// temp dir, the CA, the entry cache and the agent/svid/entry/bundle API
// services behind the real endpoints (TCP+mTLS on loopback, admin unix
// socket), with a fake clock for the CA, the API and client certificate
// checks, an entry page size, and endpoints that stop and restart on the
// same port.
type testServer struct {
	*serverstack.Stack
	t  testing.TB
	ds *sqlstore.Store
}

type serverOpts struct {
	agentTTL time.Duration
	pageSize int
	// clock drives the CA, the agent service and client certificate
	// verification (nil: real clock).
	clock clock.Clock
	// attestors are node attestors besides join_token, by type.
	attestors map[string]serverAttestor
}

// serverAttestor is the server half of a node attestor
// (internal/attest/node).
type serverAttestor interface {
	Attest(ctx context.Context, payload []byte, challenge node.ChallengeFunc) (*node.Result, error)
}

func newTestServer(t testing.TB, opts serverOpts) *testServer {
	t.Helper()
	attestors := map[string]agentapi.NodeAttestor{}
	for typ, a := range opts.attestors {
		attestors[typ] = a
	}
	st := serverstack.New(t, serverstack.Options{
		TrustDomain:   td,
		Clock:         opts.clock,
		AgentTTL:      opts.agentTTL,
		EntryPageSize: opts.pageSize,
		Attestors:     attestors,
	})
	return &testServer{Stack: st, t: t, ds: st.DS}
}

// start serves the endpoints (on the same port as before after a stop).
func (s *testServer) start() { s.Start(s.t) }

func (s *testServer) stop() {
	if err := s.Stop(); err != nil {
		s.t.Errorf("endpoints Run: %v", err)
	}
}

func (s *testServer) bundle() []*x509.Certificate { return s.CA.X509Authorities() }

// admin is the admin API client.
func (s *testServer) admin() *testutil.Admin { return s.Admin(s.t) }

// createToken creates a join token through the agent API service.
func (s *testServer) createToken() (token string, agentID spiffeid.ID) {
	s.t.Helper()
	token = s.admin().CreateJoinToken(s.t, spiffeid.ID{})
	return token, s.admin().JoinTokenAgentID(token)
}

// createEntry registers spiffeID under parent with one unix:uid selector.
func (s *testServer) createEntry(parent spiffeid.ID, path, uid string, federatesWith ...string) string {
	s.t.Helper()
	e, err := adminclient.NewEntry(spiffeid.RequireFromPath(td, path), parent, "unix:uid:"+uid)
	if err != nil {
		s.t.Fatal(err)
	}
	e.FederatesWith = federatesWith
	return s.admin().CreateEntries(s.t, e)[0]
}

// ban bans an agent through the agent API service.
func (s *testServer) ban(id spiffeid.ID) { s.admin().BanAgent(s.t, id) }

// evict deletes an agent through the agent API service (agent evict).
func (s *testServer) evict(id spiffeid.ID) { s.admin().DeleteAgent(s.t, id) }

// agents lists the attested agents' IDs.
func (s *testServer) agents() map[spiffeid.ID]bool {
	s.t.Helper()
	out := make(map[spiffeid.ID]bool)
	for _, a := range s.admin().ListAgents(s.t) {
		out[spiffeid.RequireFromPath(td, a.GetId().GetPath())] = true
	}
	return out
}

// appendRoot adds an X.509 authority to our bundle through the bundle API.
func (s *testServer) appendRoot(cert *x509.Certificate) {
	s.t.Helper()
	_, err := s.admin().Bundle.AppendBundle(context.Background(), &bundlev1.AppendBundleRequest{
		X509Authorities: []*types.X509Certificate{{Asn1: cert.Raw}},
	})
	if err != nil {
		s.t.Fatalf("AppendBundle: %v", err)
	}
}

// setFederatedBundle stores the bundle of a federated trust domain.
func (s *testServer) setFederatedBundle(name string, root *x509.Certificate) {
	s.t.Helper()
	resp, err := s.admin().Bundle.BatchSetFederatedBundle(context.Background(), &bundlev1.BatchSetFederatedBundleRequest{
		Bundle: []*types.Bundle{{TrustDomain: name, X509Authorities: []*types.X509Certificate{{Asn1: root.Raw}}}},
	})
	if err != nil {
		s.t.Fatalf("BatchSetFederatedBundle: %v", err)
	}
	if c := codes.Code(resp.Results[0].Status.Code); c != codes.OK {
		s.t.Fatalf("BatchSetFederatedBundle: %s", resp.Results[0].Status.Message)
	}
}
