package federation

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/sigil-spiffe/sigil/internal/adminclient"
	"github.com/sigil-spiffe/sigil/internal/agent/fsdelivery"
	"github.com/sigil-spiffe/sigil/internal/telemetry/telemetrytest"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// deadline bounds waits for things that normally take milliseconds; tests
// never assert on timing.
const deadline = 30 * time.Second

var (
	cloudTD     = spiffeid.RequireTrustDomainFromString("cloud.test")
	edgeTD      = spiffeid.RequireTrustDomainFromString("edge.test")
	uidSelector = "unix:uid:" + strconv.Itoa(os.Getuid())
)

// peer is a federated trust domain as these tests fake it: a CA and JWT
// signing keys, whose bundle is set on our server with the bundle API
// (what `bundle set` or a federation refresher does).
type peer struct {
	td   spiffeid.TrustDomain
	cas  []*testca.CA
	keys []*testca.JWTKey
}

func newPeer(t *testing.T, td spiffeid.TrustDomain) *peer {
	p := &peer{td: td}
	p.rotate(t)
	return p
}

// rotate adds a new CA and JWT key; the previous ones stay in the bundle,
// as during a real rotation.
func (p *peer) rotate(t *testing.T) {
	t.Helper()
	p.cas = append(p.cas, testca.New(t, testca.TrustDomain(p.td), testca.Subject(p.td.Name()+" CA "+strconv.Itoa(len(p.cas)+1))))
	p.keys = append(p.keys, testca.NewJWTKey(t, p.td.Name()+"-"+strconv.Itoa(len(p.keys)+1)))
}

func (p *peer) ca() *testca.CA         { return p.cas[len(p.cas)-1] }
func (p *peer) jwtKey() *testca.JWTKey { return p.keys[len(p.keys)-1] }

func (p *peer) bundle(t *testing.T) *spiffebundle.Bundle {
	t.Helper()
	b := spiffebundle.New(p.td)
	for _, ca := range p.cas {
		b.AddX509Authority(ca.Cert)
	}
	for _, k := range p.keys {
		k.AddTo(t, b)
	}
	b.SetRefreshHint(5 * time.Minute)
	b.SetSequenceNumber(uint64(len(p.cas)))
	return b
}

// TestFederatedBundlesReachWorkloads: a workload whose entry federates
// with edge.test gets edge.test's bundle from every Workload API call
// (X509SVIDResponse.federated_bundles, FetchX509Bundles, FetchJWTBundles),
// validates edge.test JWT-SVIDs with ValidateJWTSVID, completes go-spiffe
// mTLS with an edge.test workload authorized by trust domain, and finds the
// bundle in its filesystem delivery directory. A rotation of edge.test's
// bundle reaches open streams and the directory with no new call. With the
// server stopped, an agent restarted meanwhile serves all of it again from
// its data_dir.
func TestFederatedBundlesReachWorkloads(t *testing.T) {
	var err error
	srv := testutil.StartServer(t, testutil.ServerConfig{TrustDomain: cloudTD.Name()})
	adm := srv.Admin(t)
	edge := newPeer(t, edgeTD)
	adm.SetFederatedBundle(t, edge.bundle(t))

	appID := srv.ID("/app")
	agentID := srv.ID("/agent/site")
	fsDir := filepath.Join(testutil.ShortTempDir(t), "app")
	cfg := testutil.AgentFor(t, srv, "/agent/site", "")
	cfg.FilesystemDelivery = []testutil.FilesystemDelivery{{Name: "app", SPIFFEID: appID.String(), Directory: fsDir}}
	if cfg.HealthPort, err = testutil.FreePort(); err != nil {
		t.Fatal(err)
	}
	a := testutil.StartAgent(t, cfg)

	e, err := adminclient.NewEntry(appID, agentID, uidSelector)
	if err != nil {
		t.Fatal(err)
	}
	e.FederatesWith = []string{edgeTD.Name()}
	adm.CreateEntries(t, e)
	testutil.RequireSVID(t, a.SocketAddr(), appID, deadline)
	cloudBundle, err := x509bundle.Parse(cloudTD, adm.BundlePEM(t))
	if err != nil {
		t.Fatal(err)
	}

	expectServed(t, a.SocketAddr(), edge)
	expectDelivered(t, fsDir, edge)
	src := testutil.NewX509Source(t, a.SocketAddr())
	expectMTLS(t, src, edge, cloudBundle)

	// A workload of a trust domain the entry does not federate with is
	// refused, though its CA is just as valid.
	other := newPeer(t, spiffeid.RequireTrustDomainFromString("other.test"))
	if err := mtls(src, other.ca().SVID(t, spiffeid.RequireFromPath(other.td, "/svc")), other.td, cloudBundle); err == nil {
		t.Fatal("a workload of other.test (not federated) completed mTLS")
	}

	// Rotation: streams opened before it receive the new bundle.
	x509Updates := watchX509(t, a.SocketAddr())
	jwtUpdates := watchJWTBundles(t, a.SocketAddr())
	edge.rotate(t)
	adm.SetFederatedBundle(t, edge.bundle(t))
	waitFor(t, "rotated edge.test X.509 authorities on the open X509-SVID stream", x509Updates, func(c *workloadapi.X509Context) bool {
		b, ok := c.Bundles.Get(edgeTD)
		return ok && sameCerts(b.X509Authorities(), edge.bundle(t).X509Authorities())
	})
	waitFor(t, "rotated edge.test JWT keys on the open JWT bundles stream", jwtUpdates, func(s *jwtbundle.Set) bool {
		b, ok := s.Get(edgeTD)
		return ok && len(b.JWTAuthorities()) == len(edge.keys)
	})
	expectServed(t, a.SocketAddr(), edge)
	expectDelivered(t, fsDir, edge)
	poll(t, "X509Source with the rotated edge.test bundle", func() bool {
		b, err := src.GetX509BundleForTrustDomain(edgeTD)
		return err == nil && sameCerts(b.X509Authorities(), edge.bundle(t).X509Authorities())
	})
	expectMTLS(t, src, edge, cloudBundle)

	// The agent reports when it got the bundle (no federation
	// relationship: the server never fetched it itself).
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", cfg.HealthPort)
	updated := scrapeAge(t, metricsURL)
	if updated <= 0 || updated > float64(time.Now().Unix()+1) {
		t.Fatalf("%s = %v, want the Unix time the agent received the rotated bundle", ageMetric, updated)
	}

	// The server goes away (and with it any way to reach edge.test); the
	// agent restarts meanwhile and serves the last bundle from data_dir,
	// still saying how old it is.
	srv.Stop(t)
	a.Stop(t)
	a.Start(t)
	expectServed(t, a.SocketAddr(), edge)
	expectDelivered(t, fsDir, edge)
	offlineSrc := testutil.NewX509Source(t, a.SocketAddr())
	expectMTLS(t, offlineSrc, edge, cloudBundle)
	if got := scrapeAge(t, metricsURL); got != updated {
		t.Errorf("after the restart %s = %v, want still %v", ageMetric, got, updated)
	}
	ready := testutil.WaitHTTP(t, fmt.Sprintf("http://127.0.0.1:%d/ready", cfg.HealthPort), 200, "degraded", deadline)
	if !strings.Contains(ready, "federated bundles: edge.test updated ") {
		t.Errorf("degraded status does not say how old the edge.test bundle is: %s", ready)
	}
}

// ageMetric is the agent's gauge of when each federated bundle was last
// known current.
const ageMetric = "sigil_agent_federated_bundle_updated_timestamp_seconds"

// scrapeAge is ageMetric of edge.test on the agent's metrics.
func scrapeAge(t *testing.T, url string) float64 {
	t.Helper()
	m, err := telemetrytest.Scrape(url)
	if err != nil {
		t.Fatal(err)
	}
	v, ok := m.Value(ageMetric, "trust_domain", edgeTD.Name())
	if !ok {
		t.Fatalf("no %s{trust_domain=%q} in %s", ageMetric, edgeTD.Name(), url)
	}
	return v
}

// expectServed checks every Workload API call a workload makes for
// edge's current bundle: X509-SVID response, X.509 bundles, JWT bundles,
// and ValidateJWTSVID of a token signed with edge's newest key (and the
// refusal of one signed with a key edge.test never published).
func expectServed(t *testing.T, addr string, edge *peer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	want := edge.bundle(t)
	opt := workloadapi.WithAddr(addr)

	x509ctx, err := workloadapi.FetchX509Context(ctx, opt)
	if err != nil {
		t.Fatalf("FetchX509Context: %v", err)
	}
	if b, ok := x509ctx.Bundles.Get(edge.td); !ok || !sameCerts(b.X509Authorities(), want.X509Authorities()) {
		t.Errorf("X509-SVID response: federated bundle of %s is %v, want its %d authorities", edge.td, b, len(want.X509Authorities()))
	}
	if _, ok := x509ctx.Bundles.Get(cloudTD); !ok {
		t.Errorf("X509-SVID response: no bundle of our own trust domain")
	}

	x509s, err := workloadapi.FetchX509Bundles(ctx, opt)
	if err != nil {
		t.Fatalf("FetchX509Bundles: %v", err)
	}
	if b, ok := x509s.Get(edge.td); !ok || !sameCerts(b.X509Authorities(), want.X509Authorities()) {
		t.Errorf("FetchX509Bundles: bundle of %s is %v, want its %d authorities", edge.td, b, len(want.X509Authorities()))
	}
	if x509s.Len() != 2 {
		t.Errorf("FetchX509Bundles: %d bundles, want ours and %s", x509s.Len(), edge.td)
	}

	jwts, err := workloadapi.FetchJWTBundles(ctx, opt)
	if err != nil {
		t.Fatalf("FetchJWTBundles: %v", err)
	}
	jb, ok := jwts.Get(edge.td)
	if !ok {
		t.Fatalf("FetchJWTBundles: no bundle of %s", edge.td)
	}
	for _, k := range edge.keys {
		if pub, ok := jb.FindJWTAuthority(k.ID); !ok || !k.Key.PublicKey.Equal(pub) {
			t.Errorf("FetchJWTBundles: %s lacks JWT key %s", edge.td, k.ID)
		}
	}
	if n := len(jb.JWTAuthorities()); n != len(edge.keys) {
		t.Errorf("FetchJWTBundles: %s has %d JWT keys, want %d", edge.td, n, len(edge.keys))
	}

	peerID := spiffeid.RequireFromPath(edge.td, "/caller")
	token, err := edge.jwtKey().SignJWTSVID(peerID, []string{"cloud-app"}, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := workloadapi.ValidateJWTSVID(ctx, token, "cloud-app", opt)
	if err != nil {
		t.Fatalf("ValidateJWTSVID of an edge.test JWT-SVID: %v", err)
	}
	if svid.ID != peerID {
		t.Errorf("ValidateJWTSVID: %s, want %s", svid.ID, peerID)
	}
	forged, err := testca.NewJWTKey(t, edge.jwtKey().ID).SignJWTSVID(peerID, []string{"cloud-app"}, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := workloadapi.ValidateJWTSVID(ctx, forged, "cloud-app", opt); err == nil {
		t.Error("ValidateJWTSVID accepted a token signed with a key edge.test did not publish")
	}
}

// expectDelivered waits until filesystem delivery has written edge's
// current X.509 authorities (the agent writes asynchronously).
func expectDelivered(t *testing.T, dir string, edge *peer) {
	t.Helper()
	want := edge.bundle(t).X509Authorities()
	path := filepath.Join(dir, fsdelivery.FederatedBundleFile(edge.td.Name()))
	poll(t, "filesystem delivery of "+path, func() bool {
		b, err := x509bundle.Load(edge.td, path)
		return err == nil && sameCerts(b.X509Authorities(), want)
	})
	if _, err := spiffebundle.Load(edge.td, filepath.Join(dir, fsdelivery.FederatedBundleJSONFile(edge.td.Name()))); err != nil {
		t.Errorf("federated SPIFFE bundle file: %v", err)
	}
}

// expectMTLS: our workload (src) serves mTLS authorizing edge's trust
// domain; an edge workload with an SVID of edge's newest CA, trusting our
// bundle and authorizing our trust domain, completes the handshake both
// ways.
func expectMTLS(t *testing.T, src *workloadapi.X509Source, edge *peer, ours *x509bundle.Bundle) {
	t.Helper()
	if err := mtls(src, edge.ca().SVID(t, spiffeid.RequireFromPath(edge.td, "/svc")), edge.td, ours); err != nil {
		t.Fatalf("mTLS with an %s workload: %v", edge.td, err)
	}
}

// mtls runs one TLS exchange between a server using src and authorizing
// members of peerTD, and a client presenting peerSVID, trusting ours and
// authorizing members of ours' trust domain. It returns the first error
// of either side.
func mtls(src *workloadapi.X509Source, peerSVID *x509svid.SVID, peerTD spiffeid.TrustDomain, ours *x509bundle.Bundle) error {
	return testutil.MTLSExchange(
		tlsconfig.MTLSServerConfig(src, src, tlsconfig.AuthorizeMemberOf(peerTD)),
		tlsconfig.MTLSClientConfig(peerSVID, ours, tlsconfig.AuthorizeMemberOf(ours.TrustDomain())), deadline)
}

// watchX509 opens a go-spiffe X509 context watch on addr; every update
// goes to the returned channel (the watch ends with the test).
func watchX509(t *testing.T, addr string) <-chan *workloadapi.X509Context {
	t.Helper()
	c := newClient(t, addr)
	ch := make(chan *workloadapi.X509Context, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.WatchX509Context(ctx, x509Watcher(ch))
	}()
	t.Cleanup(func() { cancel(); <-done })
	return ch
}

// watchJWTBundles is watchX509 for JWT bundles.
func watchJWTBundles(t *testing.T, addr string) <-chan *jwtbundle.Set {
	t.Helper()
	c := newClient(t, addr)
	ch := make(chan *jwtbundle.Set, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.WatchJWTBundles(ctx, jwtWatcher(ch))
	}()
	t.Cleanup(func() { cancel(); <-done })
	return ch
}

func newClient(t *testing.T, addr string) *workloadapi.Client {
	t.Helper()
	c, err := workloadapi.New(context.Background(), workloadapi.WithAddr(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

type x509Watcher chan *workloadapi.X509Context

func (w x509Watcher) OnX509ContextUpdate(c *workloadapi.X509Context) { sendLatest(w, c) }
func (x509Watcher) OnX509ContextWatchError(error)                    {}

type jwtWatcher chan *jwtbundle.Set

func (w jwtWatcher) OnJWTBundlesUpdate(s *jwtbundle.Set) { sendLatest(w, s) }
func (jwtWatcher) OnJWTBundlesWatchError(error)          {}

// sendLatest never blocks a watcher: a full channel drops its oldest.
func sendLatest[T any](ch chan T, v T) {
	for {
		select {
		case ch <- v:
			return
		default:
			select {
			case <-ch:
			default:
			}
		}
	}
}

// waitFor reads updates until one satisfies ok.
func waitFor[T any](t *testing.T, what string, updates <-chan T, ok func(T) bool) {
	t.Helper()
	timeout := time.After(deadline)
	for {
		select {
		case u := <-updates:
			if ok(u) {
				return
			}
		case <-timeout:
			t.Fatalf("no %s within %v", what, deadline)
		}
	}
}

// poll checks cond until it holds.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if err := testutil.Poll(deadline, 20*time.Millisecond, func() (bool, error) { return cond(), nil }); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func sameCerts(a, b []*x509.Certificate) bool {
	der := func(cs []*x509.Certificate) []string {
		out := make([]string, len(cs))
		for i, c := range cs {
			out[i] = string(c.Raw)
		}
		slices.Sort(out)
		return out
	}
	return slices.Equal(der(a), der(b))
}
