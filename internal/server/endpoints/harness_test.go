package endpoints_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/attest/node/jointoken"
	"github.com/sigil-spiffe/sigil/internal/ca"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/datastore/sqlstore"
	"github.com/sigil-spiffe/sigil/internal/keys"
	agentapi "github.com/sigil-spiffe/sigil/internal/server/api/agent"
	bundleapi "github.com/sigil-spiffe/sigil/internal/server/api/bundle"
	entryapi "github.com/sigil-spiffe/sigil/internal/server/api/entry"
	svidapi "github.com/sigil-spiffe/sigil/internal/server/api/svid"
	"github.com/sigil-spiffe/sigil/internal/server/endpoints"
	"github.com/sigil-spiffe/sigil/internal/server/entrycache"
	"github.com/sigil-spiffe/sigil/internal/server/ratelimit"
	"github.com/sigil-spiffe/sigil/internal/testutil"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// harness is a complete server API stack: real SQLite, real CA, real entry
// cache, real gRPC over loopback TLS and a unix socket.
type harness struct {
	t        *testing.T
	ds       *sqlstore.Store
	dsPath   string // the SQLite file of ds
	ca       *ca.Manager
	cache    *entrycache.Cache
	ep       *endpoints.Endpoints
	tcpAddr  string
	sockPath string
	apiClk   *clock.Fake // clock of the agent service (join-token expiry)
	rlClk    *clock.Fake // clock of the rate limiter
	stop     func()
	cancel   context.CancelFunc // cancels Run's context
	stopped  chan struct{}      // closed when Run returned; then runErr is set
	runErr   error
}

type harnessOpts struct {
	rateLimit ratelimit.Config
	attestors map[string]agentapi.NodeAttestor
	// endpoints carries the keepalive and graceful stop settings.
	endpoints endpoints.Config
	// noCacheRun leaves the entry cache's Run loop off: journal events are
	// then applied only by Sync or by the cache's read-your-writes path.
	noCacheRun bool
	// log is what every component logs to (default: discarded).
	log *slog.Logger
	// realRateLimitClock gives the rate limiter the real clock instead of
	// the fake h.rlClk (its delays then pass on their own).
	realRateLimitClock bool
}

func newHarness(t *testing.T, opts harnessOpts) *harness {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	if opts.log != nil {
		log = opts.log
	}

	dsPath := filepath.Join(dir, "datastore.sqlite3")
	ds, err := sqlstore.Open(ctx, sqlstore.Config{DatabaseType: "sqlite3", ConnectionString: dsPath})
	if err != nil {
		t.Fatalf("open datastore: %v", err)
	}
	t.Cleanup(func() { ds.Close() })

	m, err := ca.New(ca.Config{TrustDomain: td, Keys: keys.NewMemory(), Journal: ds, Bundles: ds, Log: log})
	if err != nil {
		t.Fatalf("ca: %v", err)
	}
	if err := m.Init(ctx); err != nil {
		t.Fatalf("ca init: %v", err)
	}

	cache := entrycache.New(entrycache.Config{Store: ds, Log: log})
	if err := cache.Load(ctx); err != nil {
		t.Fatalf("cache load: %v", err)
	}
	// As in the server: apply journal events on Poke (agent bans and
	// deletions wake watch streams through it).
	if !opts.noCacheRun {
		cacheCtx, stopCache := context.WithCancel(ctx)
		cacheDone := make(chan struct{})
		go func() { defer close(cacheDone); _ = cache.Run(cacheCtx) }()
		t.Cleanup(func() { stopCache(); <-cacheDone })
	}

	h := &harness{t: t, ds: ds, dsPath: dsPath, ca: m, cache: cache, apiClk: clock.NewFake(time.Now()), rlClk: clock.NewFake(time.Now())}

	// join_token, as the server configures it, plus the test's attestors.
	jt, err := jointoken.New(jointoken.Config{TrustDomain: td, Tokens: ds, Clock: h.apiClk})
	if err != nil {
		t.Fatal(err)
	}
	attestors := map[string]agentapi.NodeAttestor{jointoken.Type: jt}
	maps.Copy(attestors, opts.attestors)
	agentSvc, err := agentapi.New(agentapi.Config{TrustDomain: td, Store: ds, CA: m, AgentTTL: time.Hour, Cache: cache, Clock: h.apiClk, Log: log, Attestors: attestors})
	if err != nil {
		t.Fatalf("agent service: %v", err)
	}
	svidSvc, err := svidapi.New(svidapi.Config{TrustDomain: td, CA: m, Entries: cache, Store: ds, Log: log})
	if err != nil {
		t.Fatalf("svid service: %v", err)
	}
	validator, err := endpoints.NewAgentValidator(endpoints.AgentValidatorConfig{Nodes: ds, Cache: cache, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	entrySvc := entryapi.New(entryapi.Config{Store: ds, Cache: cache, AgentValidator: validator, TrustDomain: td, Log: log})
	bundleSvc := bundleapi.New(bundleapi.Config{Store: ds, Cache: cache, TrustDomain: td, Log: log})

	serverKey := newKey(t)
	serverChain, err := m.SignX509SVID(ctx, ca.X509SVIDParams{SPIFFEID: spiffeid.RequireFromPath(td, "/spire/server"), PublicKey: serverKey.Public()})
	if err != nil {
		t.Fatalf("server SVID: %v", err)
	}
	serverCert := &tls.Certificate{PrivateKey: serverKey, Leaf: serverChain[0]}
	for _, c := range serverChain {
		serverCert.Certificate = append(serverCert.Certificate, c.Raw)
	}

	rl := opts.rateLimit
	rl.Clock = h.rlClk
	if opts.realRateLimitClock {
		rl.Clock = nil
	}
	// Short socket path: sun_path is limited to 108 bytes.
	h.sockPath = filepath.Join(testutil.ShortTempDir(t), "private", "api.sock")
	ep, err := endpoints.New(endpoints.Config{
		TCPAddr:     &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)},
		SocketPath:  h.sockPath,
		TrustDomain: td,
		ServerSVID:  func() (*tls.Certificate, error) { return serverCert, nil },
		Bundle:      m.X509Authorities,
		Nodes:       ds,
		Entries:     cache,
		RateLimit:   rl,
		Log:         log,

		KeepaliveTime:       opts.endpoints.KeepaliveTime,
		KeepaliveTimeout:    opts.endpoints.KeepaliveTimeout,
		KeepaliveMinTime:    opts.endpoints.KeepaliveMinTime,
		GracefulStopTimeout: opts.endpoints.GracefulStopTimeout,
		Register: func(s *grpc.Server) {
			agentSvc.Register(s)
			svidSvc.Register(s)
			entrySvc.Register(s)
			bundleSvc.Register(s)
		},
	})
	if err != nil {
		t.Fatalf("endpoints: %v", err)
	}
	h.ep = ep
	runCtx, cancel := context.WithCancel(ctx)
	h.stopped = make(chan struct{})
	go func() { h.runErr = ep.Run(runCtx); close(h.stopped) }()
	select {
	case <-ep.Ready():
	case <-h.stopped:
		cancel()
		t.Fatalf("endpoints stopped early: %v", h.runErr)
	}
	h.tcpAddr = ep.TCPAddr().String()
	h.cancel = cancel
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			cancel()
			<-h.stopped
			if h.runErr != nil {
				t.Errorf("endpoints Run: %v", h.runErr)
			}
		})
	}
	t.Cleanup(h.stop)
	return h
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func csrFor(t *testing.T, key crypto.Signer, uris ...string) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func (h *harness) bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(td, h.ca.X509Authorities())
}

func (h *harness) dial(creds credentials.TransportCredentials, extra ...grpc.DialOption) *grpc.ClientConn {
	h.t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+h.tcpAddr, append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, extra...)...)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { conn.Close() })
	return conn
}

// anonConn is TCP+TLS without a client certificate (as an agent before
// attestation), verifying the server's SPIFFE ID.
func (h *harness) anonConn(extra ...grpc.DialOption) *grpc.ClientConn {
	cfg := tlsconfig.TLSClientConfig(h.bundle(), tlsconfig.AuthorizeID(spiffeid.RequireFromPath(td, "/spire/server")))
	return h.dial(credentials.NewTLS(cfg), extra...)
}

// svidConn is TCP+mTLS presenting svid.
func (h *harness) svidConn(svid *x509svid.SVID) *grpc.ClientConn {
	cfg := tlsconfig.MTLSClientConfig(svid, h.bundle(), tlsconfig.AuthorizeID(spiffeid.RequireFromPath(td, "/spire/server")))
	return h.dial(credentials.NewTLS(cfg))
}

// localConn is the admin unix socket.
func (h *harness) localConn() *grpc.ClientConn {
	h.t.Helper()
	conn, err := grpc.NewClient("unix://"+h.sockPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { conn.Close() })
	return conn
}

func (h *harness) createToken(req *agentv1.CreateJoinTokenRequest) string {
	h.t.Helper()
	if req.Ttl == 0 {
		req.Ttl = 600
	}
	jt, err := agentv1.NewAgentClient(h.localConn()).CreateJoinToken(context.Background(), req)
	if err != nil {
		h.t.Fatalf("CreateJoinToken: %v", err)
	}
	return jt.Value
}

// attest runs AttestAgent with a join token and returns the agent SVID.
func (h *harness) attest(conn *grpc.ClientConn, token string, key crypto.Signer) (*x509svid.SVID, error) {
	h.t.Helper()
	return attestWith(conn, "join_token", []byte(token), csrFor(h.t, key), key)
}

func attestWith(conn *grpc.ClientConn, typ string, payload, csr []byte, key crypto.Signer) (*x509svid.SVID, error) {
	return attestCtx(context.Background(), conn, typ, payload, csr, key)
}

func attestCtx(ctx context.Context, conn *grpc.ClientConn, typ string, payload, csr []byte, key crypto.Signer) (*x509svid.SVID, error) {
	stream, err := agentv1.NewAgentClient(conn).AttestAgent(ctx)
	if err != nil {
		return nil, err
	}
	err = stream.Send(&agentv1.AttestAgentRequest{Step: &agentv1.AttestAgentRequest_Params_{Params: &agentv1.AttestAgentRequest_Params{
		Data:   &types.AttestationData{Type: typ, Payload: payload},
		Params: &agentv1.AgentX509SVIDParams{Csr: csr},
	}}})
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	_ = stream.CloseSend()
	res := resp.GetResult()
	if res == nil {
		return nil, errors.New("no result in AttestAgent response")
	}
	return svidFromChain(res.GetSvid().GetCertChain(), key)
}

func svidFromChain(chain [][]byte, key crypto.Signer) (*x509svid.SVID, error) {
	var certs []*x509.Certificate
	for _, raw := range chain {
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("empty chain")
	}
	id, err := x509svid.IDFromCert(certs[0])
	if err != nil {
		return nil, err
	}
	return &x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key}, nil
}

// mintSVID mints an X509-SVID for id over the admin socket.
func (h *harness) mintSVID(id spiffeid.ID) *x509svid.SVID {
	h.t.Helper()
	key := newKey(h.t)
	chain, err := h.ca.SignX509SVID(context.Background(), ca.X509SVIDParams{SPIFFEID: id, PublicKey: key.Public()})
	if err != nil {
		h.t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
}

func (h *harness) createEntry(e *datastore.Entry) *datastore.Entry {
	h.t.Helper()
	res, err := h.ds.CreateEntries(context.Background(), []*datastore.Entry{e})
	if err != nil || res[0].Err != nil {
		h.t.Fatalf("create entry: %v %v", err, res)
	}
	if err := h.cache.Sync(context.Background()); err != nil {
		h.t.Fatal(err)
	}
	return res[0].Entry
}

// waitFor polls cond until it holds, failing the test after a generous
// minute.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func requireCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("got %v (%v), want %v", got, err, want)
	}
}

func deniedReason(err error) types.PermissionDeniedDetails_Reason {
	for _, d := range status.Convert(err).Details() {
		if pd, ok := d.(*types.PermissionDeniedDetails); ok {
			return pd.Reason
		}
	}
	return types.PermissionDeniedDetails_UNKNOWN
}
