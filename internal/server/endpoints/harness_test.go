package endpoints_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net/url"
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

	"github.com/sigil-spiffe/sigil/internal/ca"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/datastore/sqlstore"
	agentapi "github.com/sigil-spiffe/sigil/internal/server/api/agent"
	"github.com/sigil-spiffe/sigil/internal/server/endpoints"
	"github.com/sigil-spiffe/sigil/internal/server/entrycache"
	"github.com/sigil-spiffe/sigil/internal/server/ratelimit"
	"github.com/sigil-spiffe/sigil/internal/testutil/serverstack"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// harness is a complete server API stack (testutil/serverstack): real
// SQLite, real CA, real entry cache, real gRPC over loopback TLS and a unix
// socket, with the hooks these tests need (fake clocks for the agent
// service and the rate limiter, extra attestors, keepalive settings, the
// cache's Run loop off).
type harness struct {
	t        *testing.T
	st       *serverstack.Stack
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
	stopped  <-chan struct{}    // closed when Run returned; then runErr is set
}

// runErr is the error Run returned (after stopped).
func (h *harness) runErr() error { return h.st.RunErr() }

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
	h := &harness{t: t, apiClk: clock.NewFake(time.Now()), rlClk: clock.NewFake(time.Now())}
	rl := opts.rateLimit
	rl.Clock = h.rlClk
	if opts.realRateLimitClock {
		rl.Clock = nil
	}
	st := serverstack.New(t, serverstack.Options{
		TrustDomain: td,
		Log:         opts.log,
		AgentClock:  h.apiClk,
		Attestors:   opts.attestors,
		RateLimit:   rl,
		Endpoints:   opts.endpoints,
		NoCacheRun:  opts.noCacheRun,
	})
	h.st, h.ds, h.dsPath, h.ca, h.cache, h.sockPath = st, st.DS, st.DSPath, st.CA, st.Cache, st.SocketPath
	h.ep, h.tcpAddr, h.cancel, h.stopped = st.Endpoints(), st.Addr(), st.Cancel, st.Stopped()
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			if err := st.Stop(); err != nil {
				t.Errorf("endpoints Run: %v", err)
			}
		})
	}
	return h
}

// otherServer opens the harness's datastore as another server sharing the
// database would (its writes do not notify this server's cache).
func (h *harness) otherServer(t *testing.T) *sqlstore.Store {
	t.Helper()
	s, err := sqlstore.Open(context.Background(), sqlstore.Config{DatabaseType: "sqlite3", ConnectionString: h.dsPath})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
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
