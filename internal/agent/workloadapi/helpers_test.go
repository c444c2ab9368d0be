package workloadapi_test

import (
	"context"
	"crypto"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/agent/endpoints"
	"github.com/sigil-spiffe/sigil/internal/agent/workloadapi"
	"github.com/sigil-spiffe/sigil/internal/attest/workload/unix"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// testCA is a small SPIFFE CA: an X.509 root (testca) and a JWT signing
// key.
type testCA struct {
	*testca.CA
	jwt *testca.JWTKey
}

func newTestCA(t testing.TB, trustDomain spiffeid.TrustDomain) *testCA {
	t.Helper()
	return &testCA{
		CA: testca.New(t, testca.TrustDomain(trustDomain), testca.Serial(1),
			testca.SubjectName(pkix.Name{Organization: []string{"Sigil test"}, CommonName: "test CA " + trustDomain.Name()})),
		jwt: testca.NewJWTKey(t, "jwt-"+trustDomain.Name()),
	}
}

func (ca *testCA) bundle(t testing.TB) *spiffebundle.Bundle {
	t.Helper()
	b := ca.Bundle()
	ca.jwt.AddTo(t, b)
	return b
}

// svid issues an X509-SVID for id valid from notBefore to notAfter.
func (ca *testCA) svid(t testing.TB, id spiffeid.ID, notBefore, notAfter time.Time) *cache.X509SVID {
	t.Helper()
	s := ca.SVID(t, id, testca.SubjectName(pkix.Name{Organization: []string{"SPIRE"}}), testca.Validity(notBefore, notAfter))
	return &cache.X509SVID{Chain: s.Certificates, PrivateKey: s.PrivateKey}
}

// mintJWT signs a JWT-SVID with the CA's JWT key.
func (ca *testCA) mintJWT(id spiffeid.ID, audience []string, ttl time.Duration) (string, error) {
	return ca.jwt.SignJWTSVID(id, audience, ttl)
}

// minter is the test JWTMinter: like the agent's manager it signs (here
// with the CA key) and caches the token; it counts calls, and fails with
// failWith's error when set.
type minter struct {
	ca    *testCA
	cache *cache.Cache
	calls atomic.Int32

	mu   sync.Mutex
	fail error
}

func (m *minter) failWith(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fail = err
}

func (m *minter) MintJWTSVID(_ context.Context, e *cache.Entry, audience []string) (string, error) {
	m.calls.Add(1)
	if e == nil {
		return "", errors.New("nil entry")
	}
	m.mu.Lock()
	fail := m.fail
	m.mu.Unlock()
	if fail != nil {
		return "", fail
	}
	tok, err := m.ca.mintJWT(e.SPIFFEID, audience, 5*time.Minute)
	if err != nil {
		return "", err
	}
	now := time.Now().Truncate(time.Second)
	m.cache.SetJWTSVID(e.SPIFFEID, audience, cache.JWTSVID{Token: tok, IssuedAt: now, ExpiresAt: now.Add(5 * time.Minute)})
	return tok, nil
}

// env is a running Workload API server on a real socket.
type env struct {
	ca     *testCA
	cache  *cache.Cache
	clk    *clock.Fake
	socket string
	addr   string
	minter *minter
	dir    string
}

type envOpts struct {
	dir      string // cache dir; "" = in memory
	clk      *clock.Fake
	existing *cache.Cache
	ca       *testCA
	// attestor replaces the unix attestor; log replaces the test logger.
	attestor endpoints.Attestor
	log      *slog.Logger
	// unauthVerifiers sets AllowUnauthenticatedVerifiers.
	unauthVerifiers bool
	// allowedForeignClaims is the Workload API's AllowedForeignJWTClaims.
	allowedForeignClaims []string
}

func uidSelector() selector.Selector {
	return selector.Selector{Type: "unix", Value: "uid:" + strconv.Itoa(os.Getuid())}
}

func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}

func startEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	clk := o.clk
	if clk == nil {
		clk = clock.NewFake(time.Now())
	}
	ca := o.ca
	if ca == nil {
		ca = newTestCA(t, td)
	}
	c := o.existing
	if c == nil {
		c = cache.New(cache.Config{Dir: o.dir, TrustDomain: td, Clock: clk, Log: testLog(t)})
		if err := c.SetBundle(ca.bundle(t)); err != nil {
			t.Fatal(err)
		}
	}
	dir := testutil.ShortTempDir(t)
	socket := filepath.Join(dir, "sock", "agent.sock")
	m := &minter{ca: ca, cache: c}
	attestor := o.attestor
	if attestor == nil {
		attestor = unix.New(unix.Config{})
	}
	log := o.log
	if log == nil {
		log = testLog(t)
	}
	wl, err := workloadapi.New(workloadapi.Config{
		Cache:     c,
		JWTMinter: m,
		Log:       log,
		Clock:     clk,

		AllowUnauthenticatedVerifiers: o.unauthVerifiers,
		AllowedForeignJWTClaims:       o.allowedForeignClaims,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := endpoints.New(endpoints.Config{
		SocketPath: socket,
		Attestor:   attestor,
		Services:   []endpoints.Service{wl},
		Log:        log,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- srv.Run(ctx) }()
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
		}
	})
	select {
	case <-srv.Ready():
	case err := <-done:
		t.Fatalf("server stopped: %v", err)
	}
	return &env{ca: ca, cache: c, clk: clk, socket: socket, addr: "unix://" + socket, minter: m, dir: dir}
}

func entry(id string, spiffeID spiffeid.ID, created time.Time, sels ...selector.Selector) *cache.Entry {
	return &cache.Entry{
		ID:             id,
		SPIFFEID:       spiffeID,
		ParentID:       spiffeid.RequireFromPath(td, "/agent"),
		Selectors:      sels,
		RevisionNumber: 1,
		CreatedAt:      created,
	}
}

// addIdentity registers an entry matching the test process and gives it an
// SVID valid for ttl from the fake clock's now.
func (e *env) addIdentity(t testing.TB, entries []*cache.Entry, svids map[string]*cache.X509SVID) {
	t.Helper()
	if err := e.cache.SetEntries(entries); err != nil {
		t.Fatal(err)
	}
	if err := e.cache.SetX509SVIDs(svids); err != nil {
		t.Fatal(err)
	}
}

func keysEqual(a, b crypto.PrivateKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PrivateKey) bool })
	return ok && ea.Equal(b)
}

func mustID(t testing.TB, path string) spiffeid.ID {
	t.Helper()
	id, err := spiffeid.FromPath(td, path)
	if err != nil {
		t.Fatal(fmt.Errorf("id %q: %w", path, err))
	}
	return id
}

const identityWait = workloadapi.DefaultIdentityWait
