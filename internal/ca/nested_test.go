package ca_test

import (
	"context"
	"crypto/x509"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/ca"
	"github.com/sigil-spiffe/sigil/internal/ca/upstreamdisk"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/keys"
)

// nestedUpstream is an upstream server stand-in: it mints from a disk
// upstream, records published JWT keys (returning them plus the
// upstream's own key) and fails every call while offline is set.
type nestedUpstream struct {
	up       ca.UpstreamAuthority
	upKey    datastore.JWTKey
	mu       sync.Mutex
	offline  bool
	mints    int
	failures int
	keys     []datastore.JWTKey
}

func (n *nestedUpstream) down() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.offline {
		n.failures++
		return errors.New("upstream unreachable")
	}
	return nil
}

func (n *nestedUpstream) setOffline(v bool) {
	n.mu.Lock()
	n.offline = v
	n.mu.Unlock()
}

func (n *nestedUpstream) counts() (mints, failures, published int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.mints, n.failures, len(n.keys)
}

func (n *nestedUpstream) MintX509CA(ctx context.Context, csr []byte, ttl time.Duration) ([]*x509.Certificate, []*x509.Certificate, error) {
	if err := n.down(); err != nil {
		return nil, nil, err
	}
	n.mu.Lock()
	n.mints++
	n.mu.Unlock()
	return n.up.MintX509CA(ctx, csr, ttl)
}

func (n *nestedUpstream) PublishJWTAuthority(_ context.Context, k datastore.JWTKey) ([]datastore.JWTKey, error) {
	if err := n.down(); err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.keys = append(n.keys, k)
	return append([]datastore.JWTKey{n.upKey}, n.keys...), nil
}

func newNestedUpstream(t *testing.T, clk clock.Clock) *nestedUpstream {
	t.Helper()
	dir := t.TempDir()
	root, rootKey := makeCA(t, "root", nil, nil, clk.Now().Add(1000*time.Hour))
	writePEM(t, filepath.Join(dir, "cert.pem"), []*x509.Certificate{root}, nil)
	writePEM(t, filepath.Join(dir, "key.pem"), nil, rootKey)
	up, err := upstreamdisk.New(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), "", upstreamdisk.WithClock(clk))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(newPub(t))
	if err != nil {
		t.Fatal(err)
	}
	return &nestedUpstream{up: up, upKey: datastore.JWTKey{KeyID: "upstream-kid", PublicKey: pub, ExpiresAt: clk.Now().Add(1000 * time.Hour).Unix()}}
}

// TestNestedOfflineRestartAndRecovery: a nested CA restarted while its
// upstream is unreachable and its next CA is due still starts and signs
// with the current intermediate; Run retries the due rotation until the
// upstream is back, then prepares, publishes (JWT key upstream) and
// activates the next authorities without any manual step.
func TestNestedOfflineRestartAndRecovery(t *testing.T) {
	const caTTL = 10 * time.Minute
	clk := clock.NewFake(time.Now().Truncate(time.Second))
	store, km := newMemStore(), keys.NewMemory()
	up := newNestedUpstream(t, clk)
	opt := func(c *ca.Config) {
		c.CATTL, c.X509SVIDTTL, c.JWTSVIDTTL = caTTL, time.Minute, time.Minute
		c.Upstream = up
	}
	e := newEnv(t, store, km, clk, opt)

	// Online start: the JWT key was published upstream and the upstream's
	// JWT keys were added to the local bundle.
	if _, _, published := up.counts(); published != 1 {
		t.Fatalf("%d JWT keys published upstream, want 1", published)
	}
	if kids := e.bundleKids(t); !kids["upstream-kid"] || len(kids) != 2 {
		t.Fatalf("bundle JWT keys %v, want the local key and upstream-kid", kids)
	}
	chain := e.sign(t, ca.X509SVIDParams{})
	e.verify(t, chain, workload)
	if len(chain) != 2 {
		t.Fatalf("SVID chain of %d certificates, want leaf + intermediate", len(chain))
	}
	inter1 := chain[1]

	// Cut off, then restart past half-life: the next CA is due.
	up.setOffline(true)
	clk.Add(6 * time.Minute)
	e = newEnv(t, store, km, clk, opt)
	if _, failures, _ := up.counts(); failures == 0 {
		t.Fatal("the restarted CA did not try to prepare its next authorities")
	}
	if got := e.sign(t, ca.X509SVIDParams{}); !got[1].Equal(inter1) {
		t.Fatal("offline restart: SVID not signed under the current intermediate")
	}
	if _, err := e.m.SignJWTSVID(context.Background(), ca.JWTSVIDParams{SPIFFEID: workload, Audience: []string{"a"}}); err != nil {
		t.Fatalf("offline restart: JWT-SVID: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.m.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	waitArmed(t, clk)
	_, before, _ := up.counts()
	for range 3 { // still offline: retried, still signing
		clk.Add(15 * time.Second)
		waitArmed(t, clk)
		if got := e.sign(t, ca.X509SVIDParams{}); !got[1].Equal(inter1) {
			t.Fatal("offline: SVID not signed under the current intermediate")
		}
	}
	mintsOffline, after, _ := up.counts()
	if after <= before {
		t.Fatal("the due rotation was not retried while offline")
	}

	up.setOffline(false)
	clk.Add(15 * time.Second)
	waitArmed(t, clk)
	mints, _, published := up.counts()
	if mints != mintsOffline+1 || published != 2 {
		t.Fatalf("after reconnect: %d mints (want %d), %d JWT keys published (want 2)", mints, mintsOffline+1, published)
	}
	// Past the activation point (5/6 of the first CA's life) the new
	// intermediate signs.
	clk.Add(2*time.Minute + 30*time.Second)
	waitArmed(t, clk)
	chain = e.sign(t, ca.X509SVIDParams{})
	e.verify(t, chain, workload)
	if chain[1].Equal(inter1) {
		t.Fatal("the next intermediate was not activated after the upstream came back")
	}
}

// TestNestedStartFailsWithoutUsableCA: with no journal, a nested CA cannot
// start while its upstream is unreachable (it has nothing to sign with).
func TestNestedStartFailsWithoutUsableCA(t *testing.T) {
	clk := clock.NewFake(time.Now())
	up := newNestedUpstream(t, clk)
	up.setOffline(true)
	store := newMemStore()
	m, err := ca.New(ca.Config{TrustDomain: td, Keys: keys.NewMemory(), Journal: store, Bundles: store, Upstream: up, Clock: clk, Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Init(context.Background()); err == nil {
		t.Fatal("Init succeeded with an unreachable upstream and no CA")
	}
}

// watchingUpstream hands the CA's update function to the test.
type watchingUpstream struct {
	*nestedUpstream
	update chan func(context.Context, ca.UpstreamBundle) error
}

func (w *watchingUpstream) WatchUpstreamBundle(ctx context.Context, update func(context.Context, ca.UpstreamBundle) error) error {
	w.update <- update
	<-ctx.Done()
	return nil
}

func TestUpstreamBundleWatcher(t *testing.T) {
	clk := clock.NewFake(time.Now().Truncate(time.Second))
	w := &watchingUpstream{nestedUpstream: newNestedUpstream(t, clk), update: make(chan func(context.Context, ca.UpstreamBundle) error, 1)}
	e := newEnv(t, nil, nil, clk, func(c *ca.Config) { c.Upstream = w })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.m.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	var update func(context.Context, ca.UpstreamBundle) error
	select {
	case update = <-w.update:
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not start the upstream bundle watcher")
	}

	// The upstream rotated its root: the new root and a new upstream JWT
	// key reach the local bundle; an expired root does not.
	newRoot, _ := makeCA(t, "root 2", nil, nil, clk.Now().Add(2000*time.Hour))
	deadRoot, _ := makeCA(t, "dead root", nil, nil, clk.Now().Add(-time.Minute))
	pub, err := x509.MarshalPKIXPublicKey(newPub(t))
	if err != nil {
		t.Fatal(err)
	}
	b := ca.UpstreamBundle{
		X509Authorities: append(e.bundleCerts(t), newRoot, deadRoot),
		JWTKeys:         []datastore.JWTKey{{KeyID: "upstream-2", PublicKey: pub}, {KeyID: "garbage", PublicKey: []byte("x")}},
	}
	changes := e.changes.Load()
	if err := update(ctx, b); err != nil {
		t.Fatal(err)
	}
	certs := e.bundleCerts(t)
	if !contains(certs, newRoot) || contains(certs, deadRoot) || len(certs) != 2 {
		t.Fatalf("bundle has %d X.509 authorities (new root %v, expired root %v); want the old and the new root", len(certs), contains(certs, newRoot), contains(certs, deadRoot))
	}
	if kids := e.bundleKids(t); !kids["upstream-2"] || kids["garbage"] {
		t.Fatalf("bundle JWT keys %v: want upstream-2 and not the unparsable key", kids)
	}
	if e.changes.Load() != changes+1 {
		t.Fatalf("OnBundleChange called %d times, want 1", e.changes.Load()-changes)
	}
	// The same bundle again changes nothing.
	if err := update(ctx, b); err != nil {
		t.Fatal(err)
	}
	if e.changes.Load() != changes+1 {
		t.Fatal("OnBundleChange called for an unchanged upstream bundle")
	}
}
