package manager_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/agent/manager"
	agentcatalog "github.com/sigil-spiffe/sigil/internal/catalog/agent"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/keys"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// waitTimeout bounds every wait; nothing here asserts on timing.
const waitTimeout = 20 * time.Second

type testAgent struct {
	t      testing.TB
	dir    string
	m      *manager.Manager
	cache  *cache.Cache
	cancel context.CancelFunc
	// cacheDone and runDone receive the cache's and the manager's Run
	// results; returned is set once runResult consumed the latter.
	cacheDone, runDone chan error
	returned           bool
}

type agentOpts struct {
	token       string
	clock       clock.Clock
	renewBefore cache.RenewalPolicy
	safety      time.Duration
	poll        time.Duration
	insecure    bool // no trust bundle; insecure bootstrap
	noBundle    bool // no configured trust bundle
	dialOptions []grpc.DialOption
	// log receives the manager's and cache's logs (default: WARN and up
	// to stderr).
	log                *slog.Logger
	availabilityTarget time.Duration
	agentVersion       string
	// attestor replaces the join-token attestor of token.
	attestor manager.NodeAttestor
	// keys, if set, keeps the agent SVID key (default: keys.NewDisk in
	// dir/keys).
	keys keys.Manager
	// metrics, if set, receives the manager's measurements.
	metrics manager.Metrics
}

// startAgent builds a cache (loaded from dir) and a manager and runs both.
func startAgent(t testing.TB, srv *testServer, dir string, o agentOpts) *testAgent {
	t.Helper()
	log := o.log
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	c := cache.New(cache.Config{Dir: dir, TrustDomain: td, Clock: o.clock, Log: log})
	if err := c.Load(); err != nil {
		t.Fatalf("cache load: %v", err)
	}
	var km keys.Manager = o.keys
	if km == nil {
		d, err := keys.NewDisk(filepath.Join(dir, "keys"))
		if err != nil {
			t.Fatal(err)
		}
		km = d
	}
	safety := o.safety
	if safety == 0 {
		safety = 30 * time.Second
	}
	bundle := srv.bundle()
	if o.insecure || o.noBundle {
		bundle = nil
	}
	var attestor manager.NodeAttestor = agentcatalog.JoinToken{Token: o.token}
	if o.attestor != nil {
		attestor = o.attestor
	}
	m, err := manager.New(manager.Config{
		Servers:            []string{srv.Addr()},
		TrustDomain:        td,
		TrustBundle:        bundle,
		InsecureBootstrap:  o.insecure,
		Attestor:           attestor,
		DataDir:            dir,
		Keys:               km,
		Cache:              c,
		Clock:              o.clock,
		Log:                log,
		RenewBefore:        o.renewBefore,
		AvailabilityTarget: o.availabilityTarget,
		SafetySyncInterval: safety,
		SyncInterval:       o.poll,
		MinBackoff:         20 * time.Millisecond,
		MaxBackoff:         200 * time.Millisecond,
		DialOptions:        o.dialOptions,
		AgentVersion:       o.agentVersion,
		Metrics:            o.metrics,
	})
	if err != nil {
		t.Fatalf("manager.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &testAgent{t: t, dir: dir, m: m, cache: c, cancel: cancel, cacheDone: make(chan error, 1), runDone: make(chan error, 1)}
	go func() { a.cacheDone <- c.Run(ctx) }()
	go func() { a.runDone <- m.Run(ctx) }()
	t.Cleanup(a.stop)
	return a
}

func (a *testAgent) stop() {
	if a.cancel == nil {
		return
	}
	a.cancel()
	a.cancel = nil
	if err := <-a.cacheDone; err != nil {
		a.t.Errorf("cache Run: %v", err)
	}
	if !a.returned {
		if err := <-a.runDone; err != nil {
			a.t.Errorf("manager Run: %v", err)
		}
	}
}

// runResult waits for the manager's Run to return by itself.
func (a *testAgent) runResult() error {
	a.t.Helper()
	select {
	case err := <-a.runDone:
		a.returned = true
		return err
	case <-time.After(waitTimeout):
		a.t.Fatalf("manager Run did not return; status %+v", a.m.Status())
		return nil
	}
}

// waitIdentity waits, through a cache subscription, for the workload with
// this uid to be served an SVID for spiffeID, and returns it.
func (a *testAgent) waitIdentity(uid string, id spiffeid.ID) cache.Identity {
	a.t.Helper()
	var got cache.Identity
	a.waitUpdate(uid, func(u *cache.WorkloadUpdate) bool {
		for _, ident := range u.Identities {
			if ident.Entry.SPIFFEID == id {
				got = ident
				return true
			}
		}
		return false
	})
	return got
}

// waitUpdate waits for a state of the workload with this uid satisfying ok.
func (a *testAgent) waitUpdate(uid string, ok func(*cache.WorkloadUpdate) bool) *cache.WorkloadUpdate {
	a.t.Helper()
	sub := a.cache.Subscribe(selector.NewSet(selector.Selector{Type: "unix", Value: "uid:" + uid}))
	defer sub.Close()
	timeout := time.After(waitTimeout)
	for {
		select {
		case u := <-sub.Updates():
			if ok(u) {
				return u
			}
		case <-timeout:
			a.t.Fatalf("no matching workload update for uid %s; manager status %+v", uid, a.m.Status())
			return nil
		}
	}
}

// eventually polls cond (state that has no subscription, e.g. Status).
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func verifySVID(t testing.TB, srv *testServer, ident cache.Identity, want spiffeid.ID) {
	t.Helper()
	id, _, err := x509svid.Verify(ident.SVID, x509bundle.FromX509Authorities(td, srv.bundle()))
	if err != nil {
		t.Fatalf("SVID does not verify against the server's bundle: %v", err)
	}
	if id != want {
		t.Fatalf("SVID is for %s, want %s", id, want)
	}
	if !ident.PrivateKey.Public().(*ecdsa.PublicKey).Equal(ident.SVID[0].PublicKey) {
		t.Fatal("private key does not match the SVID")
	}
}

func TestAttestSyncPersistAndRestart(t *testing.T) {
	srv := newTestServer(t, serverOpts{})
	token, agentID := srv.createToken()
	wl := spiffeid.RequireFromPath(td, "/workload/one")
	srv.createEntry(agentID, wl.Path(), "1000")

	dir := t.TempDir()
	a := startAgent(t, srv, dir, agentOpts{token: token})
	ident := a.waitIdentity("1000", wl)
	verifySVID(t, srv, ident, wl)

	agentSVID := a.m.AgentSVID()
	if agentSVID == nil || agentSVID.ID != agentID {
		t.Fatalf("agent SVID = %v, want one for %s", agentSVID, agentID)
	}
	if _, _, err := x509svid.Verify(agentSVID.Certificates, x509bundle.FromX509Authorities(td, srv.bundle())); err != nil {
		t.Fatalf("agent SVID does not verify: %v", err)
	}
	eventually(t, "connected status", func() bool { s := a.m.Status(); return s.Connected && !s.LastSync.IsZero() })
	fi, err := os.Stat(filepath.Join(dir, "agent_svid.json"))
	if err != nil {
		t.Fatalf("persisted agent SVID: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("agent_svid.json mode %v, want 0600", fi.Mode().Perm())
	}
	a.stop()

	// Restart with the same data dir and the (now consumed) token: the
	// persisted SVID is reused, so no attestation happens.
	b := startAgent(t, srv, dir, agentOpts{token: token})
	if got := b.m.AgentSVID(); got == nil || got.Certificates[0].SerialNumber.Cmp(agentSVID.Certificates[0].SerialNumber) != 0 {
		t.Fatalf("restarted agent did not restore its SVID: %v", got)
	}
	// The cache serves the persisted workload SVID before any sync.
	if u := b.cache.FetchWorkloadUpdate(selector.NewSet(selector.Selector{Type: "unix", Value: "uid:1000"})); len(u.Identities) != 1 {
		t.Fatalf("restarted cache serves %d identities, want 1", len(u.Identities))
	}
	wl2 := spiffeid.RequireFromPath(td, "/workload/two")
	srv.createEntry(agentID, wl2.Path(), "1001")
	verifySVID(t, srv, b.waitIdentity("1001", wl2), wl2)
	if got := b.m.AgentSVID(); got.Certificates[0].SerialNumber.Cmp(agentSVID.Certificates[0].SerialNumber) != 0 {
		t.Fatal("restarted agent re-attested instead of reusing its SVID")
	}
	eventually(t, "connected status after restart", func() bool {
		s := b.m.Status()
		return s.Connected && s.AgentID == agentID && !s.LastSync.IsZero()
	})
}

func TestEntryAndBundleChangesArePushed(t *testing.T) {
	srv := newTestServer(t, serverOpts{})
	token, agentID := srv.createToken()
	a := startAgent(t, srv, t.TempDir(), agentOpts{token: token})
	eventually(t, "first sync", func() bool { return !a.m.Status().LastSync.IsZero() })

	// Entry created after start reaches the cache (pushed by watch mode;
	// the safety sync is 30 s, far beyond the wait).
	wl := spiffeid.RequireFromPath(td, "/workload/late")
	srv.createEntry(agentID, wl.Path(), "2000")
	verifySVID(t, srv, a.waitIdentity("2000", wl), wl)

	// Our bundle gains a root: pushed to workloads.
	root := testca.SelfSigned(t, testca.Subject("extra root"))
	srv.appendRoot(root)
	a.waitUpdate("2000", func(u *cache.WorkloadUpdate) bool {
		return u.Bundle != nil && u.Bundle.HasX509Authority(root)
	})

	// A federated trust domain: the entry federating with it brings its
	// bundle to the workload.
	fedRoot := testca.SelfSigned(t, testca.Subject("federated root"))
	srv.setFederatedBundle("fed.example", fedRoot)
	wlFed := spiffeid.RequireFromPath(td, "/workload/fed")
	srv.createEntry(agentID, wlFed.Path(), "2001", "fed.example")
	u := a.waitUpdate("2001", func(u *cache.WorkloadUpdate) bool {
		b, ok := u.FederatedBundles[spiffeid.RequireTrustDomainFromString("fed.example")]
		return ok && b.HasX509Authority(fedRoot) && len(u.Identities) == 1
	})
	verifySVID(t, srv, u.Identities[0], wlFed)
}

func TestOfflineServesCacheAndReconnects(t *testing.T) {
	srv := newTestServer(t, serverOpts{})
	token, agentID := srv.createToken()
	wl := spiffeid.RequireFromPath(td, "/workload/offline")
	srv.createEntry(agentID, wl.Path(), "3000")
	dir := t.TempDir()
	a := startAgent(t, srv, dir, agentOpts{token: token})
	a.waitIdentity("3000", wl)

	srv.stop()
	eventually(t, "degraded status", func() bool { s := a.m.Status(); return !s.Connected && !s.DegradedSince.IsZero() })
	set := selector.NewSet(selector.Selector{Type: "unix", Value: "uid:3000"})
	if u := a.cache.FetchWorkloadUpdate(set); len(u.Identities) != 1 || u.Identities[0].Entry.SPIFFEID != wl {
		t.Fatalf("cache does not serve the SVID while offline: %+v", u)
	}

	// An agent started while the server is down comes up from disk.
	a.stop()
	b := startAgent(t, srv, dir, agentOpts{})
	if u := b.cache.FetchWorkloadUpdate(set); len(u.Identities) != 1 {
		t.Fatalf("restarted offline agent serves %d identities, want 1", len(u.Identities))
	}
	if b.m.Status().Connected {
		t.Fatal("offline agent reports connected")
	}

	// The server comes back on the same port; the agent reconnects and a
	// new entry reaches it.
	srv.start()
	wl2 := spiffeid.RequireFromPath(td, "/workload/back")
	srv.createEntry(agentID, wl2.Path(), "3001")
	verifySVID(t, srv, b.waitIdentity("3001", wl2), wl2)
	eventually(t, "connected status", func() bool { return b.m.Status().Connected })
}

func TestAgentSVIDRenewal(t *testing.T) {
	// One fake clock for the server (CA, agent service, client
	// certificate checks) and the agent.
	clk := clock.NewFake(time.Now())
	srv := newTestServer(t, serverOpts{agentTTL: 4 * time.Hour, clock: clk})
	token, agentID := srv.createToken()
	dir := t.TempDir()
	wl0 := spiffeid.RequireFromPath(td, "/workload/rotating")
	srv.createEntry(agentID, wl0.Path(), "3999")
	metrics := &recordMetrics{}
	a := startAgent(t, srv, dir, agentOpts{token: token, clock: clk, metrics: metrics})
	before := a.waitIdentity("3999", wl0).SVID[0]
	first := a.m.AgentSVID()

	// Past the workload SVID's half-life (1h TTL, jitter up to 6 min) but
	// not the agent SVID's (4h): the rotation timer re-signs it within the
	// running session.
	clk.Add(35 * time.Minute)
	a.waitUpdate("3999", func(u *cache.WorkloadUpdate) bool {
		return len(u.Identities) == 1 && u.Identities[0].SVID[0].SerialNumber.Cmp(before.SerialNumber) != 0 &&
			u.Identities[0].SVID[0].NotAfter.After(before.NotAfter)
	})
	if s := a.m.AgentSVID(); s.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0 {
		t.Fatal("agent SVID renewed before its half-life")
	}

	// Past the agent SVID's half-life (2h, jitter up to 24 min).
	clk.Add(90 * time.Minute)
	eventually(t, "renewed agent SVID", func() bool {
		s := a.m.AgentSVID()
		return s.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0
	})
	renewed := a.m.AgentSVID()
	if renewed.ID != agentID {
		t.Fatalf("renewed SVID is for %s", renewed.ID)
	}
	// The metrics saw the workload SVID signed twice, the agent SVID
	// renewed, and the sync rounds.
	if w, ag, rounds := metrics.counts(); w < 2 || ag != 1 || rounds < 1 {
		t.Fatalf("metrics: %d workload SVIDs, %d agent renewals, %d sync rounds; want >= 2, 1, >= 1", w, ag, rounds)
	}
	if _, _, err := x509svid.Verify(renewed.Certificates, x509bundle.FromX509Authorities(td, srv.bundle()), x509svid.WithTime(clk.Now())); err != nil {
		t.Fatalf("renewed agent SVID does not verify: %v", err)
	}

	// The renewed SVID authenticates the new session: entries still flow.
	wl := spiffeid.RequireFromPath(td, "/workload/after-renewal")
	srv.createEntry(agentID, wl.Path(), "4000")
	a.waitIdentity("4000", wl)

	// And it is what a restart restores.
	a.stop()
	b := startAgent(t, srv, dir, agentOpts{clock: clk})
	if got := b.m.AgentSVID(); got.Certificates[0].SerialNumber.Cmp(renewed.Certificates[0].SerialNumber) != 0 {
		t.Fatal("restart did not restore the renewed agent SVID")
	}
}

func TestWatchFallbackAndRevisionRounds(t *testing.T) {
	// Page size 2: more than two entries are synced by revisions (the
	// delta path). Stripping the watch metadata makes the server behave
	// like SPIRE (the stream ends after one round): the manager polls.
	for _, tc := range []struct {
		name  string
		watch bool
	}{{"watch", true}, {"spire-compatible polling", false}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newTestServer(t, serverOpts{pageSize: 2})
			token, agentID := srv.createToken()
			for i, uid := range []string{"6000", "6001", "6002"} {
				srv.createEntry(agentID, "/workload/pre"+string(rune('a'+i)), uid)
			}
			o := agentOpts{token: token}
			if !tc.watch {
				o.poll = 100 * time.Millisecond
				o.dialOptions = []grpc.DialOption{grpc.WithStreamInterceptor(stripWatch)}
			}
			a := startAgent(t, srv, t.TempDir(), o)
			for i, uid := range []string{"6000", "6001", "6002"} {
				a.waitIdentity(uid, spiffeid.RequireFromPath(td, "/workload/pre"+string(rune('a'+i))))
			}
			wl := spiffeid.RequireFromPath(td, "/workload/post")
			srv.createEntry(agentID, wl.Path(), "6003")
			verifySVID(t, srv, a.waitIdentity("6003", wl), wl)
			if n := len(a.cache.Entries()); n != 4 {
				t.Fatalf("cache has %d entries, want 4", n)
			}
			if s := a.m.Status(); s.WatchMode != tc.watch {
				t.Fatalf("WatchMode = %v, want %v", s.WatchMode, tc.watch)
			}
		})
	}
}

func TestMintJWTSVID(t *testing.T) {
	srv := newTestServer(t, serverOpts{})
	token, agentID := srv.createToken()
	wl := spiffeid.RequireFromPath(td, "/workload/jwt")
	srv.createEntry(agentID, wl.Path(), "7000")
	a := startAgent(t, srv, t.TempDir(), agentOpts{token: token})
	ident := a.waitIdentity("7000", wl)

	tok, err := a.m.MintJWTSVID(context.Background(), ident.Entry, []string{"aud1", "aud2"})
	if err != nil {
		t.Fatalf("MintJWTSVID: %v", err)
	}
	svid, err := jwtsvid.ParseInsecure(tok, []string{"aud1"})
	if err != nil {
		t.Fatalf("parse JWT-SVID: %v", err)
	}
	if svid.ID != wl {
		t.Fatalf("JWT-SVID for %s, want %s", svid.ID, wl)
	}
	// A second call is served from the cache: the same token, even with
	// the server gone.
	srv.stop()
	again, err := a.m.MintJWTSVID(context.Background(), ident.Entry, []string{"aud2", "aud1"})
	if err != nil || again != tok {
		t.Fatalf("cached JWT-SVID not reused (err %v)", err)
	}
	eventually(t, "degraded status", func() bool { return !a.m.Status().Connected })
	if _, err := a.m.MintJWTSVID(context.Background(), ident.Entry, []string{"other"}); err == nil {
		t.Fatal("minting a new JWT-SVID while offline succeeded")
	}
}

func TestInsecureBootstrap(t *testing.T) {
	srv := newTestServer(t, serverOpts{})
	token, agentID := srv.createToken()
	wl := spiffeid.RequireFromPath(td, "/workload/bootstrap")
	srv.createEntry(agentID, wl.Path(), "8000")
	dir := t.TempDir()
	a := startAgent(t, srv, dir, agentOpts{token: token, insecure: true})
	verifySVID(t, srv, a.waitIdentity("8000", wl), wl)
	a.stop()

	// The downloaded bundle was persisted: a restart without bundle or
	// token authenticates the server and keeps syncing.
	b := startAgent(t, srv, dir, agentOpts{noBundle: true})
	wl2 := spiffeid.RequireFromPath(td, "/workload/bootstrap2")
	srv.createEntry(agentID, wl2.Path(), "8001")
	verifySVID(t, srv, b.waitIdentity("8001", wl2), wl2)
}

func TestExpiredAgentSVIDWithoutTokenKeepsServing(t *testing.T) {
	clk := clock.NewFake(time.Now())
	srv := newTestServer(t, serverOpts{agentTTL: 30 * time.Minute, clock: clk})
	token, agentID := srv.createToken()
	wl := spiffeid.RequireFromPath(td, "/workload/outlives-agent")
	srv.createEntry(agentID, wl.Path(), "9000") // 1h SVID
	dir := t.TempDir()
	a := startAgent(t, srv, dir, agentOpts{token: token, clock: clk})
	a.waitIdentity("9000", wl)
	a.stop()

	// Down for 45 minutes: the agent SVID (30 min) expired, the workload
	// SVID (1h) did not. No token: the agent cannot re-attest, says so,
	// and keeps serving the workload.
	clk.Add(45 * time.Minute)
	b := startAgent(t, srv, dir, agentOpts{clock: clk})
	eventually(t, "no-identity status", func() bool {
		return strings.Contains(b.m.Status().LastError, "no join token")
	})
	u := b.cache.FetchWorkloadUpdate(selector.NewSet(selector.Selector{Type: "unix", Value: "uid:9000"}))
	if len(u.Identities) != 1 || u.Identities[0].Entry.SPIFFEID != wl {
		t.Fatalf("still-valid workload SVID not served: %+v", u)
	}
}

func TestNoIdentityNoToken(t *testing.T) {
	srv := newTestServer(t, serverOpts{})
	a := startAgent(t, srv, t.TempDir(), agentOpts{})
	eventually(t, "degraded status", func() bool {
		return strings.Contains(a.m.Status().LastError, "no join token")
	})
	if a.m.AgentSVID() != nil {
		t.Fatal("agent SVID without attestation")
	}
}

// stripWatch removes the watch-mode metadata from outgoing streams.
func stripWatch(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	ctx = withoutWatch(ctx)
	return streamer(ctx, desc, cc, method, opts...)
}

func withoutWatch(ctx context.Context) context.Context {
	md, ok := metadata.FromOutgoingContext(ctx)
	if !ok {
		return ctx
	}
	md = md.Copy()
	md.Delete("sigil-sync")
	return metadata.NewOutgoingContext(ctx, md)
}

// TestAgentVersionReported: the agent reports its version (PostStatus, as
// SPIRE's agent) and the server stores it as the node's agent_version; a
// restarted agent with another version updates it.
func TestAgentVersionReported(t *testing.T) {
	srv := newTestServer(t, serverOpts{})
	token, _ := srv.createToken()
	dir := t.TempDir()
	a := startAgent(t, srv, dir, agentOpts{token: token, agentVersion: "v1.2.3-test"})
	eventually(t, "attestation", func() bool { return a.m.AgentSVID() != nil })
	nodeID := a.m.AgentSVID().ID.String()
	version := func() string {
		n, err := srv.ds.GetNode(context.Background(), nodeID)
		if err != nil {
			t.Fatal(err)
		}
		return n.AgentVersion
	}
	eventually(t, "agent_version v1.2.3-test", func() bool { return version() == "v1.2.3-test" })
	a.stop()
	b := startAgent(t, srv, dir, agentOpts{agentVersion: "v1.2.4-test"})
	eventually(t, "agent_version v1.2.4-test", func() bool { return version() == "v1.2.4-test" })
	b.stop()
}

// opaqueKeys hands out signers whose private key cannot be exported, as a
// TPM's (KeyManager "tpm").
type opaqueKeys struct{ keys.Manager }

type opaqueSigner struct{ s crypto.Signer }

func (o opaqueSigner) Public() crypto.PublicKey { return o.s.Public() }
func (o opaqueSigner) Sign(r io.Reader, d []byte, opts crypto.SignerOpts) ([]byte, error) {
	return o.s.Sign(r, d, opts)
}

func (k opaqueKeys) GenerateKey(ctx context.Context, id string, t keys.Type) (crypto.Signer, error) {
	s, err := k.Manager.GenerateKey(ctx, id, t)
	return opaqueSigner{s}, err
}

func (k opaqueKeys) GetKey(ctx context.Context, id string) (crypto.Signer, error) {
	s, err := k.Manager.GetKey(ctx, id)
	if err != nil {
		return nil, err
	}
	return opaqueSigner{s}, nil
}

// TestAgentKeyNotExportable: the agent SVID key need not be exportable
// (a TPM-held key): the agent attests, syncs, and restores its SVID after
// a restart.
func TestAgentKeyNotExportable(t *testing.T) {
	srv := newTestServer(t, serverOpts{})
	token, agentID := srv.createToken()
	wl := spiffeid.RequireFromPath(td, "/workload/one")
	srv.createEntry(agentID, wl.Path(), "1000")
	dir := t.TempDir()
	disk, err := keys.NewDisk(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, srv, dir, agentOpts{token: token, keys: opaqueKeys{disk}})
	verifySVID(t, srv, a.waitIdentity("1000", wl), wl)
	if _, ok := a.m.AgentSVID().PrivateKey.(opaqueSigner); !ok {
		t.Fatalf("agent SVID key is a %T", a.m.AgentSVID().PrivateKey)
	}
	serial := a.m.AgentSVID().Certificates[0].SerialNumber
	a.stop()
	b := startAgent(t, srv, dir, agentOpts{token: token, keys: opaqueKeys{disk}})
	if got := b.m.AgentSVID(); got == nil || got.Certificates[0].SerialNumber.Cmp(serial) != 0 {
		t.Fatalf("restarted agent did not restore its SVID: %v", got)
	}
	wl2 := spiffeid.RequireFromPath(td, "/workload/two")
	srv.createEntry(agentID, wl2.Path(), "1001")
	verifySVID(t, srv, b.waitIdentity("1001", wl2), wl2)
}

// otherDeviceKeys finds no key usable: they belong to another device's
// TPM (a data_dir copied from elsewhere).
type otherDeviceKeys struct{ keys.Manager }

func (otherDeviceKeys) GetKey(_ context.Context, id string) (crypto.Signer, error) {
	return nil, fmt.Errorf("key %q: %w", id, keys.ErrOtherDevice)
}

// TestAgentKeyOfOtherDevice: an agent whose persisted SVID key belongs to
// another device serves neither that identity nor the workload identities
// cached with it, and deletes the cache file.
func TestAgentKeyOfOtherDevice(t *testing.T) {
	srv := newTestServer(t, serverOpts{})
	token, agentID := srv.createToken()
	wl := spiffeid.RequireFromPath(td, "/workload/one")
	srv.createEntry(agentID, wl.Path(), "1000")
	dir := t.TempDir()
	a := startAgent(t, srv, dir, agentOpts{token: token})
	verifySVID(t, srv, a.waitIdentity("1000", wl), wl)
	a.stop()
	if _, err := os.Stat(filepath.Join(dir, cache.FileName)); err != nil {
		t.Fatal(err)
	}
	disk, err := keys.NewDisk(filepath.Join(dir, "keys"))
	if err != nil {
		t.Fatal(err)
	}
	b := startAgent(t, srv, dir, agentOpts{token: token, keys: otherDeviceKeys{disk}})
	if got := b.m.AgentSVID(); got != nil {
		t.Fatalf("the agent uses the other device's SVID %s", got.ID)
	}
	if u := b.cache.FetchWorkloadUpdate(selector.NewSet(selector.Selector{Type: "unix", Value: "uid:1000"})); len(u.Identities) != 0 {
		t.Fatalf("the other device's workload identities are served: %d", len(u.Identities))
	}
	if _, err := os.Stat(filepath.Join(dir, cache.FileName)); !os.IsNotExist(err) {
		t.Fatalf("the other device's workload cache is still on disk: %v", err)
	}
}

// recordMetrics counts what the manager reports (manager.Metrics).
type recordMetrics struct {
	mu                      sync.Mutex
	workload, agent, rounds int
	agentFailed             int
}

func (r *recordMetrics) SyncRound(time.Duration, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rounds++
}

func (r *recordMetrics) SVIDRenewed(kind string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case err != nil:
		if kind == manager.RenewalAgent {
			r.agentFailed++
		}
	case kind == manager.RenewalWorkload:
		r.workload++
	case kind == manager.RenewalAgent:
		r.agent++
	}
}

// counts returns the successful workload and agent renewals and the sync
// rounds seen so far.
func (r *recordMetrics) counts() (workload, agent, rounds int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.workload, r.agent, r.rounds
}

// agentFailures returns the failed agent SVID renewals seen so far.
func (r *recordMetrics) agentFailures() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.agentFailed
}
