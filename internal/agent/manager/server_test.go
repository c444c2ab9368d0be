package manager_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"path/filepath"
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

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/attest/node/jointoken"
	"github.com/sigil-spiffe/sigil/internal/ca"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore/sqlstore"
	"github.com/sigil-spiffe/sigil/internal/keys"
	agentapi "github.com/sigil-spiffe/sigil/internal/server/api/agent"
	bundleapi "github.com/sigil-spiffe/sigil/internal/server/api/bundle"
	entryapi "github.com/sigil-spiffe/sigil/internal/server/api/entry"
	svidapi "github.com/sigil-spiffe/sigil/internal/server/api/svid"
	"github.com/sigil-spiffe/sigil/internal/server/endpoints"
	"github.com/sigil-spiffe/sigil/internal/server/entrycache"
	"github.com/sigil-spiffe/sigil/internal/testutil"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// testServer is the real server stack: SQLite in a temp dir, the CA, the
// entry cache and the agent/svid/entry/bundle API services behind the real
// endpoints (TCP+mTLS on loopback, admin unix socket).
type testServer struct {
	t     testing.TB
	clk   clock.Clock
	ds    *sqlstore.Store
	ca    *ca.Manager
	cache *entrycache.Cache
	reg   func(*grpc.Server)
	cert  *tls.Certificate

	addr     *net.TCPAddr // fixed after the first start, so restarts reuse the port
	sockPath string
	stopFn   func()
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
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	ds, err := sqlstore.Open(ctx, sqlstore.Config{DatabaseType: "sqlite3", ConnectionString: filepath.Join(t.TempDir(), "datastore.sqlite3")})
	if err != nil {
		t.Fatalf("open datastore: %v", err)
	}
	t.Cleanup(func() { ds.Close() })
	cam, err := ca.New(ca.Config{TrustDomain: td, Keys: keys.NewMemory(), Journal: ds, Bundles: ds, Log: log, Clock: opts.clock})
	if err != nil {
		t.Fatalf("ca: %v", err)
	}
	if err := cam.Init(ctx); err != nil {
		t.Fatalf("ca init: %v", err)
	}
	ec := entrycache.New(entrycache.Config{Store: ds, Log: log})
	if err := ec.Load(ctx); err != nil {
		t.Fatalf("entry cache load: %v", err)
	}
	ecCtx, ecCancel := context.WithCancel(ctx)
	ecDone := make(chan struct{})
	go func() { defer close(ecDone); _ = ec.Run(ecCtx) }()
	t.Cleanup(func() { ecCancel(); <-ecDone })

	agentTTL := opts.agentTTL
	if agentTTL == 0 {
		agentTTL = time.Hour
	}
	jt, err := jointoken.New(jointoken.Config{TrustDomain: td, Tokens: ds, Clock: opts.clock})
	if err != nil {
		t.Fatal(err)
	}
	attestors := map[string]agentapi.NodeAttestor{jointoken.Type: jt}
	for typ, a := range opts.attestors {
		attestors[typ] = a
	}
	agentSvc, err := agentapi.New(agentapi.Config{TrustDomain: td, Store: ds, CA: cam, AgentTTL: agentTTL, Cache: ec, Log: log, Clock: opts.clock, Attestors: attestors})
	if err != nil {
		t.Fatalf("agent service: %v", err)
	}
	svidSvc, err := svidapi.New(svidapi.Config{TrustDomain: td, CA: cam, Entries: ec, Store: ds, Log: log})
	if err != nil {
		t.Fatalf("svid service: %v", err)
	}
	// As in production: watch streams re-check the agent (a ban or an
	// eviction ends them at once).
	agentCheck, err := endpoints.NewAgentValidator(endpoints.AgentValidatorConfig{Nodes: ds, Cache: ec, Log: log, Clock: opts.clock})
	if err != nil {
		t.Fatalf("agent validator: %v", err)
	}
	entrySvc := entryapi.New(entryapi.Config{Store: ds, Cache: ec, AgentValidator: agentCheck, TrustDomain: td, Log: log, EntryPageSize: opts.pageSize, Clock: opts.clock})
	bundleSvc := bundleapi.New(bundleapi.Config{Store: ds, Cache: ec, TrustDomain: td, Log: log})

	serverKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := cam.SignX509SVID(ctx, ca.X509SVIDParams{SPIFFEID: spiffeid.RequireFromPath(td, "/spire/server"), PublicKey: serverKey.Public()})
	if err != nil {
		t.Fatalf("server SVID: %v", err)
	}
	cert := &tls.Certificate{PrivateKey: serverKey, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	sockDir := testutil.ShortTempDir(t)

	s := &testServer{
		t: t, clk: opts.clock, ds: ds, ca: cam, cache: ec, cert: cert,
		addr:     &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)},
		sockPath: filepath.Join(sockDir, "api.sock"),
		reg: func(g *grpc.Server) {
			agentSvc.Register(g)
			svidSvc.Register(g)
			entrySvc.Register(g)
			bundleSvc.Register(g)
		},
	}
	s.start()
	t.Cleanup(s.stop)
	return s
}

// start serves the endpoints (on the same port as before after a stop).
func (s *testServer) start() {
	s.t.Helper()
	ep, err := endpoints.New(endpoints.Config{
		TCPAddr:     s.addr,
		SocketPath:  s.sockPath,
		TrustDomain: td,
		ServerSVID:  func() (*tls.Certificate, error) { return s.cert, nil },
		Bundle:      s.ca.X509Authorities,
		Nodes:       s.ds,
		Entries:     s.cache,
		Log:         slog.New(slog.DiscardHandler),
		Clock:       s.clk,
		Register:    s.reg,
	})
	if err != nil {
		s.t.Fatalf("endpoints: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ep.Run(ctx) }()
	select {
	case <-ep.Ready():
	case err := <-done:
		cancel()
		s.t.Fatalf("endpoints stopped early: %v", err)
	}
	s.addr = ep.TCPAddr().(*net.TCPAddr)
	s.stopFn = func() {
		cancel()
		if err := <-done; err != nil {
			s.t.Errorf("endpoints Run: %v", err)
		}
	}
}

func (s *testServer) stop() {
	if s.stopFn != nil {
		s.stopFn()
		s.stopFn = nil
	}
}

func (s *testServer) bundle() []*x509.Certificate { return s.ca.X509Authorities() }

// admin returns a connection to the admin unix socket.
func (s *testServer) admin() *grpc.ClientConn {
	s.t.Helper()
	conn, err := grpc.NewClient("unix://"+s.sockPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { conn.Close() })
	return conn
}

// createToken creates a join token through the agent API service.
func (s *testServer) createToken() (token string, agentID spiffeid.ID) {
	s.t.Helper()
	jt, err := agentv1.NewAgentClient(s.admin()).CreateJoinToken(context.Background(), &agentv1.CreateJoinTokenRequest{Ttl: 600})
	if err != nil {
		s.t.Fatalf("CreateJoinToken: %v", err)
	}
	return jt.Value, spiffeid.RequireFromPath(td, "/spire/agent/join_token/"+jt.Value)
}

// createEntry registers spiffeID under parent with one unix:uid selector.
func (s *testServer) createEntry(parent spiffeid.ID, path, uid string, federatesWith ...string) string {
	s.t.Helper()
	resp, err := entryv1.NewEntryClient(s.admin()).BatchCreateEntry(context.Background(), &entryv1.BatchCreateEntryRequest{
		Entries: []*types.Entry{{
			ParentId:      &types.SPIFFEID{TrustDomain: parent.TrustDomain().Name(), Path: parent.Path()},
			SpiffeId:      &types.SPIFFEID{TrustDomain: td.Name(), Path: path},
			Selectors:     []*types.Selector{{Type: "unix", Value: "uid:" + uid}},
			FederatesWith: federatesWith,
		}},
	})
	if err != nil {
		s.t.Fatalf("BatchCreateEntry: %v", err)
	}
	r := resp.Results[0]
	if codes.Code(r.Status.Code) != codes.OK {
		s.t.Fatalf("BatchCreateEntry: %s", r.Status.Message)
	}
	return r.Entry.Id
}

// ban bans an agent through the agent API service.
func (s *testServer) ban(id spiffeid.ID) {
	s.t.Helper()
	_, err := agentv1.NewAgentClient(s.admin()).BanAgent(context.Background(), &agentv1.BanAgentRequest{
		Id: &types.SPIFFEID{TrustDomain: id.TrustDomain().Name(), Path: id.Path()},
	})
	if err != nil {
		s.t.Fatalf("BanAgent: %v", err)
	}
}

// evict deletes an agent through the agent API service (agent evict).
func (s *testServer) evict(id spiffeid.ID) {
	s.t.Helper()
	_, err := agentv1.NewAgentClient(s.admin()).DeleteAgent(context.Background(), &agentv1.DeleteAgentRequest{
		Id: &types.SPIFFEID{TrustDomain: id.TrustDomain().Name(), Path: id.Path()},
	})
	if err != nil {
		s.t.Fatalf("DeleteAgent: %v", err)
	}
}

// agents lists the attested agents' IDs.
func (s *testServer) agents() map[spiffeid.ID]bool {
	s.t.Helper()
	resp, err := agentv1.NewAgentClient(s.admin()).ListAgents(context.Background(), &agentv1.ListAgentsRequest{})
	if err != nil {
		s.t.Fatalf("ListAgents: %v", err)
	}
	out := make(map[spiffeid.ID]bool)
	for _, a := range resp.Agents {
		out[spiffeid.RequireFromPath(td, a.Id.Path)] = true
	}
	return out
}

// appendRoot adds an X.509 authority to our bundle through the bundle API.
func (s *testServer) appendRoot(cert *x509.Certificate) {
	s.t.Helper()
	_, err := bundlev1.NewBundleClient(s.admin()).AppendBundle(context.Background(), &bundlev1.AppendBundleRequest{
		X509Authorities: []*types.X509Certificate{{Asn1: cert.Raw}},
	})
	if err != nil {
		s.t.Fatalf("AppendBundle: %v", err)
	}
}

// setFederatedBundle stores the bundle of a federated trust domain.
func (s *testServer) setFederatedBundle(name string, root *x509.Certificate) {
	s.t.Helper()
	resp, err := bundlev1.NewBundleClient(s.admin()).BatchSetFederatedBundle(context.Background(), &bundlev1.BatchSetFederatedBundleRequest{
		Bundle: []*types.Bundle{{TrustDomain: name, X509Authorities: []*types.X509Certificate{{Asn1: root.Raw}}}},
	})
	if err != nil {
		s.t.Fatalf("BatchSetFederatedBundle: %v", err)
	}
	if c := codes.Code(resp.Results[0].Status.Code); c != codes.OK {
		s.t.Fatalf("BatchSetFederatedBundle: %s", resp.Results[0].Status.Message)
	}
}
