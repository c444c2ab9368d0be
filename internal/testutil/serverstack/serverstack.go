// Package serverstack is the documented exception to "tests run the real
// server through internal/testutil/inproc": it wires the server's
// components by hand (SQLite datastore, CA with in-memory keys, entry cache,
// the agent/SVID/entry/bundle API services with join_token, the endpoints
// on loopback TLS and a unix admin socket) for the package tests that need
// hooks internal/app/server does not expose and should not grow:
//
//   - direct access to the datastore, the CA and the entry cache (to seed or
//     inspect state below the API, or to Sync the cache);
//   - separate fake clocks for the agent API (join-token expiry) and for the
//     rest, without the server SVID rotating on them (the app rotates it on
//     its one clock, which would date it in the future of real TLS checks);
//   - extra node attestors, an entry page size, endpoint keepalive and
//     graceful-stop settings, a rate limiter clock, an entry cache whose Run
//     loop is off;
//   - stopping and restarting the endpoints alone on the same port.
//
// Its users are internal/server/endpoints and internal/agent/manager. A test
// that needs none of this uses inproc. Keep the wiring in step with
// internal/app/server.
//
// Import it only from test code.
package serverstack

import (
	"context"
	"crypto/tls"
	"log/slog"
	"maps"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

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
	"github.com/sigil-spiffe/sigil/internal/server/ratelimit"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// Options are the hooks. The zero value is a server as the app builds it
// (with default rate limits off, an hour's agent SVIDs).
type Options struct {
	// TrustDomain defaults to example.org.
	TrustDomain spiffeid.TrustDomain
	// Log receives every component's records (nil: discarded).
	Log *slog.Logger
	// Clock drives the CA, the entry API, the agent validator and the
	// endpoints' client certificate checks (nil: the real clock).
	Clock clock.Clock
	// AgentClock drives the agent API and join-token expiry (nil: Clock).
	AgentClock clock.Clock
	// AgentTTL is the agent SVIDs' lifetime (0: an hour).
	AgentTTL time.Duration
	// EntryPageSize is the entry API's page size for agents (0: its
	// default).
	EntryPageSize int
	// Attestors are node attestors beside join_token.
	Attestors map[string]agentapi.NodeAttestor
	// RateLimit configures the endpoints' limiter (with its Clock).
	RateLimit ratelimit.Config
	// Endpoints carries the endpoints' keepalive and graceful-stop settings
	// and their Metrics and Audit (the other fields are ignored).
	Endpoints endpoints.Config
	// NoCacheRun leaves the entry cache's Run loop off: journal events are
	// then applied only by Sync or by the cache's read-your-writes path.
	NoCacheRun bool
}

// Stack is the assembled server. Its endpoints serve from New until Stop
// (or the test's cleanup); Start serves them again on the same port.
type Stack struct {
	TD     spiffeid.TrustDomain
	DS     *sqlstore.Store
	DSPath string // the SQLite file of DS
	CA     *ca.Manager
	Cache  *entrycache.Cache
	// SocketPath is the admin unix socket.
	SocketPath string

	opts     Options
	log      *slog.Logger
	cert     *tls.Certificate
	register func(*grpc.Server)
	addr     *net.TCPAddr // 127.0.0.1:0 until the first start, then its port

	ep      *endpoints.Endpoints
	cancel  context.CancelFunc
	stopped chan struct{}
	runErr  error
	admin   *testutil.Admin
}

// New builds the stack and serves its endpoints until cleanup.
func New(tb testing.TB, opts Options) *Stack {
	tb.Helper()
	ctx := context.Background()
	td := opts.TrustDomain
	if td.IsZero() {
		td = spiffeid.RequireTrustDomainFromString("example.org")
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	agentClock := opts.AgentClock
	if agentClock == nil {
		agentClock = opts.Clock
	}
	agentTTL := opts.AgentTTL
	if agentTTL == 0 {
		agentTTL = time.Hour
	}

	dsPath := filepath.Join(tb.TempDir(), "datastore.sqlite3")
	ds, err := sqlstore.Open(ctx, sqlstore.Config{DatabaseType: "sqlite3", ConnectionString: dsPath})
	if err != nil {
		tb.Fatalf("open datastore: %v", err)
	}
	tb.Cleanup(func() { ds.Close() })
	m, err := ca.New(ca.Config{TrustDomain: td, Keys: keys.NewMemory(), Journal: ds, Bundles: ds, Log: log, Clock: opts.Clock})
	if err != nil {
		tb.Fatalf("ca: %v", err)
	}
	if err := m.Init(ctx); err != nil {
		tb.Fatalf("ca init: %v", err)
	}
	cache := entrycache.New(entrycache.Config{Store: ds, Log: log})
	if err := cache.Load(ctx); err != nil {
		tb.Fatalf("entry cache load: %v", err)
	}
	// As in the server: apply journal events on Poke (agent bans and
	// deletions wake watch streams through it).
	if !opts.NoCacheRun {
		cacheCtx, stopCache := context.WithCancel(ctx)
		cacheDone := make(chan struct{})
		go func() { defer close(cacheDone); _ = cache.Run(cacheCtx) }()
		tb.Cleanup(func() { stopCache(); <-cacheDone })
	}

	// join_token, as the server configures it, plus the test's attestors.
	jt, err := jointoken.New(jointoken.Config{TrustDomain: td, Tokens: ds, Clock: agentClock})
	if err != nil {
		tb.Fatal(err)
	}
	attestors := map[string]agentapi.NodeAttestor{jointoken.Type: jt}
	maps.Copy(attestors, opts.Attestors)
	agentSvc, err := agentapi.New(agentapi.Config{TrustDomain: td, Store: ds, CA: m, AgentTTL: agentTTL, Clock: agentClock, Log: log, Attestors: attestors})
	if err != nil {
		tb.Fatalf("agent service: %v", err)
	}
	svidSvc, err := svidapi.New(svidapi.Config{TrustDomain: td, CA: m, Entries: cache, Store: ds, Log: log})
	if err != nil {
		tb.Fatalf("svid service: %v", err)
	}
	// As in production: watch streams re-check the agent (a ban or an
	// eviction ends them at once).
	validator, err := endpoints.NewAgentValidator(endpoints.AgentValidatorConfig{Nodes: ds, Cache: cache, Log: log, Clock: opts.Clock})
	if err != nil {
		tb.Fatalf("agent validator: %v", err)
	}
	entrySvc := entryapi.New(entryapi.Config{Store: ds, Cache: cache, AgentValidator: validator, TrustDomain: td, Log: log, EntryPageSize: opts.EntryPageSize, Clock: opts.Clock})
	bundleSvc := bundleapi.New(bundleapi.Config{Store: ds, TrustDomain: td, Log: log})

	// The server SVID, signed once (it does not rotate here).
	serverKey := testca.NewECKey(tb)
	chain, err := m.SignX509SVID(ctx, ca.X509SVIDParams{SPIFFEID: spiffeid.RequireFromPath(td, "/spire/server"), PublicKey: serverKey.Public()})
	if err != nil {
		tb.Fatalf("server SVID: %v", err)
	}
	cert := &tls.Certificate{PrivateKey: serverKey, Leaf: chain[0], Certificate: testca.DER(chain...)}

	s := &Stack{
		TD: td, DS: ds, DSPath: dsPath, CA: m, Cache: cache,
		// Short: sun_path is limited to 108 bytes.
		SocketPath: filepath.Join(testutil.ShortTempDir(tb), "private", "api.sock"),
		opts:       opts, log: log, cert: cert,
		addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)},
		register: func(g *grpc.Server) {
			agentSvc.Register(g)
			svidSvc.Register(g)
			entrySvc.Register(g)
			bundleSvc.Register(g)
		},
	}
	s.Start(tb)
	tb.Cleanup(func() {
		if err := s.Stop(); err != nil {
			tb.Errorf("endpoints Run: %v", err)
		}
	})
	return s
}

// Start serves the endpoints (on the port of the first start, after a
// Stop) and waits until they are ready.
func (s *Stack) Start(tb testing.TB) {
	tb.Helper()
	o := s.opts.Endpoints
	ep, err := endpoints.New(endpoints.Config{
		TCPAddr:     s.addr,
		SocketPath:  s.SocketPath,
		TrustDomain: s.TD,
		ServerSVID:  func() (*tls.Certificate, error) { return s.cert, nil },
		Bundle:      s.CA.X509Authorities,
		Nodes:       s.DS,
		Entries:     s.Cache,
		RateLimit:   s.opts.RateLimit,
		Log:         s.log,
		Clock:       s.opts.Clock,
		Metrics:     o.Metrics,
		Audit:       o.Audit,

		KeepaliveTime:       o.KeepaliveTime,
		KeepaliveTimeout:    o.KeepaliveTimeout,
		KeepaliveMinTime:    o.KeepaliveMinTime,
		GracefulStopTimeout: o.GracefulStopTimeout,
		Register:            s.register,
	})
	if err != nil {
		tb.Fatalf("endpoints: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { s.runErr = ep.Run(ctx); close(stopped) }()
	select {
	case <-ep.Ready():
	case <-stopped:
		cancel()
		tb.Fatalf("endpoints stopped early: %v", s.runErr)
	}
	s.ep, s.cancel, s.stopped = ep, cancel, stopped
	s.addr = ep.TCPAddr().(*net.TCPAddr)
}

// Endpoints are the running endpoints.
func (s *Stack) Endpoints() *endpoints.Endpoints { return s.ep }

// Addr is the agent endpoint's host:port.
func (s *Stack) Addr() string { return s.addr.String() }

// Cancel cancels the endpoints' Run without waiting (see Stopped).
func (s *Stack) Cancel() { s.cancel() }

// Stopped is closed when the endpoints' Run has returned; RunErr is then
// its error.
func (s *Stack) Stopped() <-chan struct{} { return s.stopped }

// RunErr is the error the endpoints' Run returned (after Stopped).
func (s *Stack) RunErr() error { return s.runErr }

// Stop cancels the endpoints' Run, waits for it and returns its error. It
// is idempotent until the next Start (later calls return nil).
func (s *Stack) Stop() error {
	if s.cancel == nil {
		return nil
	}
	s.cancel()
	<-s.stopped
	s.cancel = nil
	return s.runErr
}

// Admin is a client of the admin socket, dialled on first use and closed
// on tb's cleanup; it reconnects after a restart.
func (s *Stack) Admin(tb testing.TB) *testutil.Admin {
	tb.Helper()
	if s.admin == nil {
		s.admin = testutil.DialAdmin(tb, s.SocketPath, s.TD)
	}
	return s.admin
}
