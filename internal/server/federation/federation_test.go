package federation

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/datastore/sqlstore"
	"github.com/sigil-spiffe/sigil/internal/telemetry"
	"github.com/sigil-spiffe/sigil/internal/telemetry/telemetrytest"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

var (
	localTD = spiffeid.RequireTrustDomainFromString("local.test")
	peerTD  = spiffeid.RequireTrustDomainFromString("peer.test")
	peerID  = spiffeid.RequireFromPath(peerTD, "/spire/server")
)

// waitTimeout bounds every wait for an event-driven condition.
const waitTimeout = 20 * time.Second

func openStore(t *testing.T) *sqlstore.Store {
	t.Helper()
	s, err := sqlstore.Open(context.Background(), sqlstore.Config{DatabaseType: "sqlite3", ConnectionString: filepath.Join(t.TempDir(), "ds.sqlite3")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// peer is another trust domain's server: its store holding its bundle,
// its CA and a bundle endpoint presenting an SVID of that CA.
type peer struct {
	t     *testing.T
	store *sqlstore.Store
	ca    *testca.CA
	svid  atomic.Pointer[tls.Certificate]
	hint  time.Duration
	addr  *net.TCPAddr
	stop  func()
}

func newPeer(t *testing.T, hint time.Duration) *peer {
	p := &peer{t: t, store: openStore(t), ca: testca.New(t, testca.TrustDomain(peerTD)), hint: hint, addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}
	if _, err := p.store.SetBundle(context.Background(), &datastore.Bundle{TrustDomain: peerTD.Name(), X509Authorities: []datastore.X509Authority{{ASN1: p.ca.Cert.Raw}}}); err != nil {
		t.Fatal(err)
	}
	p.issue(p.ca)
	p.start()
	t.Cleanup(func() { p.stop() })
	return p
}

// issue makes the endpoint present an SVID of ca.
func (p *peer) issue(ca *testca.CA) {
	s := ca.SVID(p.t, peerID)
	p.svid.Store(&tls.Certificate{Certificate: testca.DER(s.Certificates...), PrivateKey: s.PrivateKey, Leaf: s.Certificates[0]})
}

func (p *peer) start() {
	src := NewOwnBundleSource(peerTD, p.store, p.hint, nil)
	e, err := NewEndpoint(EndpointConfig{Addr: p.addr, TrustDomain: peerTD, Source: src,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return p.svid.Load(), nil }})
	if err != nil {
		p.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	select {
	case <-e.Ready():
	case err := <-done:
		p.t.Fatalf("endpoint: %v", err)
	}
	p.addr = e.Addr().(*net.TCPAddr) // restarts reuse the port
	p.stop = func() {
		cancel()
		if err := <-done; err != nil {
			p.t.Errorf("endpoint Run: %v", err)
		}
		p.stop = func() {}
	}
}

func (p *peer) url() string { return "https://" + p.addr.String() }

// bundle is the peer's stored bundle.
func (p *peer) bundle() *datastore.Bundle {
	b, err := p.store.GetBundle(context.Background(), peerTD.Name())
	if err != nil {
		p.t.Fatal(err)
	}
	return b
}

func TestEndpointServesSPIFFEBundle(t *testing.T) {
	p := newPeer(t, 42*time.Second)
	jwt := testca.NewJWTKey(t, "kid1")
	der, _ := x509.MarshalPKIXPublicKey(jwt.Key.Public())
	if _, err := p.store.AppendBundle(context.Background(), &datastore.Bundle{TrustDomain: peerTD.Name(), JWTKeys: []datastore.JWTKey{{KeyID: "kid1", PublicKey: der}}}); err != nil {
		t.Fatal(err)
	}
	stored := p.bundle()

	// go-spiffe's client, authenticating the endpoint by its SVID.
	b, err := federation.FetchBundle(context.Background(), peerTD, p.url(), federation.WithSPIFFEAuth(p.ca.X509Bundle(), peerID))
	if err != nil {
		t.Fatal(err)
	}
	if seq, ok := b.SequenceNumber(); !ok || seq != stored.SequenceNumber {
		t.Errorf("spiffe_sequence = %d, %v; want %d", seq, ok, stored.SequenceNumber)
	}
	if h, ok := b.RefreshHint(); !ok || h != 42*time.Second {
		t.Errorf("spiffe_refresh_hint = %v, %v; want the configured 42s", h, ok)
	}
	if !b.HasX509Authority(p.ca.Cert) || !b.HasJWTAuthority("kid1") || len(b.X509Authorities()) != 1 {
		t.Errorf("bundle served = %+v", b)
	}

	// The document on the wire: a JWKS with SPIFFE's parameters.
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // test reads the raw document
	resp, err := client.Get(p.url())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	for _, k := range []string{"keys", "spiffe_sequence", "spiffe_refresh_hint"} {
		if _, ok := doc[k]; !ok {
			t.Errorf("document has no %q: %s", k, body)
		}
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	// The connection is not kept idle after the answer.
	if !resp.Close {
		t.Error("the endpoint kept the connection open after answering")
	}
	// SPIRE's answers elsewhere.
	for path, want := range map[string]int{"/other": http.StatusNotFound, "/keys": http.StatusNotFound} {
		r, err := client.Get(p.url() + path)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		if r.StatusCode != want {
			t.Errorf("GET %s = %d, want %d", path, r.StatusCode, want)
		}
	}
	r, err := client.Post(p.url(), "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST = %d, want 405", r.StatusCode)
	}

	// A client expecting another endpoint ID, or trusting another CA,
	// refuses the endpoint.
	if _, err := federation.FetchBundle(context.Background(), peerTD, p.url(),
		federation.WithSPIFFEAuth(p.ca.X509Bundle(), spiffeid.RequireFromPath(peerTD, "/other"))); err == nil {
		t.Error("fetch expecting another endpoint SPIFFE ID succeeded")
	}
	other := testca.New(t, testca.TrustDomain(peerTD))
	if _, err := federation.FetchBundle(context.Background(), peerTD, p.url(), federation.WithSPIFFEAuth(other.X509Bundle(), peerID)); err == nil {
		t.Error("fetch trusting another CA succeeded")
	}
}

// A bundle written (a CA rotation) is served at once after Invalidate, and
// within a second without it.
func TestOwnBundleSourceFollowsWrites(t *testing.T) {
	p := newPeer(t, time.Minute)
	src := NewOwnBundleSource(peerTD, p.store, time.Minute, nil)
	b1, err := src.GetBundleForTrustDomain(peerTD)
	if err != nil {
		t.Fatal(err)
	}
	next := testca.New(t, testca.TrustDomain(peerTD))
	if _, err := p.store.AppendBundle(context.Background(), &datastore.Bundle{TrustDomain: peerTD.Name(), X509Authorities: []datastore.X509Authority{{ASN1: next.Cert.Raw}}}); err != nil {
		t.Fatal(err)
	}
	src.Invalidate()
	b2, err := src.GetBundleForTrustDomain(peerTD)
	if err != nil {
		t.Fatal(err)
	}
	if len(b1.X509Authorities()) != 1 || len(b2.X509Authorities()) != 2 {
		t.Fatalf("before %d, after %d authorities", len(b1.X509Authorities()), len(b2.X509Authorities()))
	}
	if _, err := src.GetBundleForTrustDomain(localTD); err == nil {
		t.Error("served another trust domain's bundle")
	}
}

type local struct {
	store   *sqlstore.Store
	m       *Manager
	changes atomic.Int32
	stop    func()
}

var fastIntervals = Intervals{Min: 50 * time.Millisecond, Max: 200 * time.Millisecond, Default: 200 * time.Millisecond,
	BackoffBase: 20 * time.Millisecond, Reload: 100 * time.Millisecond, FetchTimeout: 5 * time.Second}

func newLocal(t *testing.T, static []Relationship, roots *x509.CertPool) *local {
	t.Helper()
	l := &local{store: openStore(t)}
	m, err := NewManager(ManagerConfig{TrustDomain: localTD, Store: l.store, Static: static, WebPKIRoots: roots,
		OnBundleChange: func() { l.changes.Add(1) }, Intervals: fastIntervals, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	l.m = m
	return l
}

func (l *local) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.m.Run(ctx) }()
	stop := sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Manager.Run: %v", err)
		}
	})
	l.stop = stop
	t.Cleanup(stop)
}

func (l *local) bundle(t *testing.T, td spiffeid.TrustDomain) *datastore.Bundle {
	t.Helper()
	b, err := l.store.GetBundle(context.Background(), td.Name())
	if errors.Is(err, datastore.ErrNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (l *local) has(t *testing.T, td spiffeid.TrustDomain, c *x509.Certificate) bool {
	b := l.bundle(t, td)
	if b == nil {
		return false
	}
	for _, a := range b.X509Authorities {
		if string(a.ASN1) == string(c.Raw) {
			return true
		}
	}
	return false
}

func (l *local) status(t *testing.T, td spiffeid.TrustDomain) Status {
	t.Helper()
	var s Status
	eventually(t, "a relationship with "+td.Name(), func() bool {
		var ok bool
		s, ok = l.m.Status(td)
		return ok
	})
	return s
}

func spiffeRelationship(p *peer) Relationship {
	return Relationship{TrustDomain: peerTD, BundleEndpointURL: p.url(), Profile: datastore.ProfileHTTPSSPIFFE, EndpointSPIFFEID: peerID}
}

// The whole life of an https_spiffe relationship: bootstrap, a peer CA
// rotation followed without a manual step, the peer unreachable (the last
// bundle kept, status and age reported) and back.
func TestRefreshFollowsRotationAndOutage(t *testing.T) {
	p := newPeer(t, time.Second)
	l := newLocal(t, []Relationship{spiffeRelationship(p)}, nil)
	// Bootstrap: the peer's current bundle, as an operator gives it.
	if _, err := l.store.SetBundle(context.Background(), &datastore.Bundle{TrustDomain: peerTD.Name(), X509Authorities: []datastore.X509Authority{{ASN1: p.ca.Cert.Raw}}}); err != nil {
		t.Fatal(err)
	}
	l.run(t)
	eventually(t, "a first refresh", func() bool { return !l.status(t, peerTD).LastSuccess.IsZero() })
	got := l.bundle(t, peerTD)
	if got.RefreshHint != 1 || got.SequenceNumber < p.bundle().SequenceNumber {
		t.Errorf("stored %+v, peer has %+v", got, p.bundle())
	}
	if n := l.changes.Load(); n != 1 {
		t.Errorf("OnBundleChange called %d times for the first change", n)
	}

	// Refreshes of an unchanged bundle write nothing.
	seq := l.bundle(t, peerTD).SequenceNumber
	attempts := l.status(t, peerTD).Attempts
	eventually(t, "three more refreshes", func() bool { return l.status(t, peerTD).Attempts >= attempts+3 })
	if b := l.bundle(t, peerTD); b.SequenceNumber != seq || l.changes.Load() != 1 {
		t.Fatalf("unchanged bundle rewritten: sequence %d -> %d, %d changes", seq, b.SequenceNumber, l.changes.Load())
	}

	// The peer rotates its CA: the new one is published, then signs the
	// endpoint's SVID, then the old one leaves the bundle.
	next := testca.New(t, testca.TrustDomain(peerTD))
	if _, err := p.store.AppendBundle(context.Background(), &datastore.Bundle{TrustDomain: peerTD.Name(), X509Authorities: []datastore.X509Authority{{ASN1: next.Cert.Raw}}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the new CA in the federated bundle", func() bool { return l.has(t, peerTD, next.Cert) })
	p.issue(next)
	if _, err := p.store.SetBundle(context.Background(), &datastore.Bundle{TrustDomain: peerTD.Name(), RefreshHint: 1, X509Authorities: []datastore.X509Authority{{ASN1: next.Cert.Raw}}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the old CA gone from the federated bundle", func() bool { return !l.has(t, peerTD, p.ca.Cert) })
	if !l.has(t, peerTD, next.Cert) {
		t.Fatal("the new CA is missing")
	}
	// The status counts an update once the attempt that stored it ends.
	eventually(t, "the rotation's updates counted", func() bool { return l.status(t, peerTD).Updates >= 3 })
	if s := l.status(t, peerTD); s.ConsecutiveFailures != 0 {
		t.Fatalf("status after the rotation: %+v", s)
	}

	// The peer goes away: the bundle stays, failures are reported.
	kept := l.bundle(t, peerTD)
	p.stop()
	// Read between attempts: during one, LastAttempt is newer than the
	// NextAttempt that started it.
	var s Status
	eventually(t, "failures reported", func() bool {
		s = l.status(t, peerTD)
		return s.ConsecutiveFailures >= 3 && s.NextAttempt.After(s.LastAttempt)
	})
	if s.LastError == "" || s.LastErrorAt.IsZero() || s.FailingSince.IsZero() || !s.NextAttempt.After(s.LastAttempt) {
		t.Errorf("status while down: %+v", s)
	}
	if age, ok := s.BundleAge(); !ok || age <= 0 {
		t.Errorf("bundle age while down = %v, %v", age, ok)
	}
	if b := l.bundle(t, peerTD); b.SequenceNumber != kept.SequenceNumber || !l.has(t, peerTD, next.Cert) {
		t.Fatalf("bundle changed while the peer was down: %+v", b)
	}
	if managed, err := l.m.RefreshBundleFor(context.Background(), peerTD); !managed || err == nil {
		t.Errorf("RefreshBundleFor while down = %v, %v", managed, err)
	}

	// Back: refreshed with no manual step.
	failures := l.status(t, peerTD).Failures
	p.start()
	eventually(t, "a refresh after the outage", func() bool {
		s := l.status(t, peerTD)
		return s.ConsecutiveFailures == 0 && s.LastSuccess.After(s.LastErrorAt)
	})
	if s := l.status(t, peerTD); s.Failures < failures || s.LastError == "" {
		t.Errorf("status after the outage: %+v", s)
	}
	if managed, err := l.m.RefreshBundleFor(context.Background(), peerTD); !managed || err != nil {
		t.Errorf("RefreshBundleFor = %v, %v", managed, err)
	}
}

// An https_spiffe relationship without a bundle waits for one, without
// touching the network, and fetches as soon as one is set (BundlesChanged,
// which the bundle API calls; the schedule here would wait an hour).
func TestRefreshWaitsForBootstrapBundle(t *testing.T) {
	p := newPeer(t, time.Second)
	l := &local{store: openStore(t)}
	m, err := NewManager(ManagerConfig{TrustDomain: localTD, Store: l.store, Static: []Relationship{spiffeRelationship(p)},
		Intervals: Intervals{Min: time.Hour, Max: 2 * time.Hour, Default: time.Hour, Reload: time.Hour}, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	l.m = m
	l.run(t)
	eventually(t, "the missing bundle reported", func() bool {
		return strings.Contains(l.status(t, peerTD).LastError, "no bundle of the trust domain")
	})
	if l.bundle(t, peerTD) != nil {
		t.Fatal("a bundle appeared without bootstrap")
	}
	if _, err := l.store.SetBundle(context.Background(), &datastore.Bundle{TrustDomain: peerTD.Name(), X509Authorities: []datastore.X509Authority{{ASN1: p.ca.Cert.Raw}}}); err != nil {
		t.Fatal(err)
	}
	l.m.BundlesChanged()
	eventually(t, "a refresh once bootstrapped", func() bool { return !l.status(t, peerTD).LastSuccess.IsZero() })
}

// A bundle that does not authenticate the endpoint, or a peer serving a
// bundle without X.509 authorities, changes nothing stored.
func TestRefreshRefusals(t *testing.T) {
	p := newPeer(t, time.Second)
	wrong := testca.New(t, testca.TrustDomain(peerTD))
	l := newLocal(t, []Relationship{spiffeRelationship(p)}, nil)
	if _, err := l.store.SetBundle(context.Background(), &datastore.Bundle{TrustDomain: peerTD.Name(), X509Authorities: []datastore.X509Authority{{ASN1: wrong.Cert.Raw}}}); err != nil {
		t.Fatal(err)
	}
	l.run(t)
	eventually(t, "an authentication failure", func() bool { return l.status(t, peerTD).Failures > 0 })
	if l.has(t, peerTD, p.ca.Cert) || !l.has(t, peerTD, wrong.Cert) {
		t.Fatal("a bundle from an unauthenticated endpoint was stored")
	}

	// Authenticated, but serving JWT keys only.
	if _, err := l.store.SetBundle(context.Background(), &datastore.Bundle{TrustDomain: peerTD.Name(), X509Authorities: []datastore.X509Authority{{ASN1: p.ca.Cert.Raw}}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a refresh", func() bool { return l.status(t, peerTD).ConsecutiveFailures == 0 })
	jwt := testca.NewJWTKey(t, "k")
	der, _ := x509.MarshalPKIXPublicKey(jwt.Key.Public())
	if _, err := p.store.SetBundle(context.Background(), &datastore.Bundle{TrustDomain: peerTD.Name(), JWTKeys: []datastore.JWTKey{{KeyID: "k", PublicKey: der}}}); err != nil {
		t.Fatal(err)
	}
	seq := l.bundle(t, peerTD).SequenceNumber
	eventually(t, "the empty bundle refused", func() bool {
		return strings.Contains(l.status(t, peerTD).LastError, "without X.509 authorities")
	})
	if b := l.bundle(t, peerTD); b.SequenceNumber != seq || len(b.X509Authorities) != 1 {
		t.Fatalf("stored after refusal: %+v", b)
	}
}

// Relationships created, changed and deleted in the datastore are
// followed; the configuration's take precedence.
func TestRelationshipsFromStoreAndConfig(t *testing.T) {
	p := newPeer(t, time.Second)
	otherTD := spiffeid.RequireTrustDomainFromString("other.test")
	l := newLocal(t, []Relationship{{TrustDomain: otherTD, BundleEndpointURL: "https://127.0.0.1:1", Profile: datastore.ProfileHTTPSWeb}}, nil)
	l.run(t)
	ctx := context.Background()
	if managed, _ := l.m.RefreshBundleFor(ctx, peerTD); managed {
		t.Fatal("RefreshBundleFor managed an unknown trust domain")
	}
	_, err := l.store.CreateFederationRelationship(ctx, &datastore.FederationRelationship{TrustDomain: peerTD.Name(), BundleEndpointURL: p.url(),
		Profile: datastore.ProfileHTTPSSPIFFE, EndpointSPIFFEID: peerID.String()}, p.bundle())
	if err != nil {
		t.Fatal(err)
	}
	l.m.TriggerReload()
	eventually(t, "the stored relationship refreshed", func() bool {
		s, ok := l.m.Status(peerTD)
		return ok && !s.LastSuccess.IsZero()
	})
	if s := l.status(t, peerTD); s.Relationship.FromConfig {
		t.Error("a stored relationship reported as from the configuration")
	}
	if s := l.status(t, otherTD); !s.Relationship.FromConfig || s.Relationship.Profile != datastore.ProfileHTTPSWeb {
		t.Errorf("static relationship status %+v", s)
	}
	if got := l.m.Statuses(); len(got) != 2 || got[0].Relationship.TrustDomain != otherTD {
		t.Errorf("Statuses = %+v", got)
	}

	// A stored relationship for the configuration's trust domain does not
	// override it.
	_, err = l.store.CreateFederationRelationship(ctx, &datastore.FederationRelationship{TrustDomain: otherTD.Name(), BundleEndpointURL: "https://stored:1",
		Profile: datastore.ProfileHTTPSWeb}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The update is followed within a reload (no trigger: another server
	// sharing the database may have made it).
	if _, err := l.store.UpdateFederationRelationship(ctx, &datastore.FederationRelationship{TrustDomain: peerTD.Name(), BundleEndpointURL: p.url() + "/"},
		&datastore.FederationRelationshipMask{BundleEndpointURL: true}, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the update followed", func() bool { return l.status(t, peerTD).Relationship.BundleEndpointURL == p.url()+"/" })
	if s := l.status(t, otherTD); s.Relationship.BundleEndpointURL != "https://127.0.0.1:1" {
		t.Errorf("the stored relationship overrode the configuration's: %+v", s.Relationship)
	}

	// Deleted: no longer refreshed, the bundle stays.
	if err := l.store.DeleteFederationRelationship(ctx, peerTD.Name()); err != nil {
		t.Fatal(err)
	}
	l.m.TriggerReload()
	eventually(t, "the relationship gone", func() bool { _, ok := l.m.Status(peerTD); return !ok })
	if l.bundle(t, peerTD) == nil {
		t.Error("the bundle went with the relationship")
	}
	// The configuration's stays even when the stored one is deleted.
	if err := l.store.DeleteFederationRelationship(ctx, otherTD.Name()); err != nil {
		t.Fatal(err)
	}
	l.m.TriggerReload()
	if _, ok := l.m.Status(otherTD); !ok {
		t.Error("deleting a stored relationship removed the configuration's")
	}
}

// The last success survives a restart (the bundle's age is not reset),
// in the status and in the metrics.
func TestLastSuccessSurvivesRestart(t *testing.T) {
	p := newPeer(t, time.Second)
	reg := telemetry.NewRegistry(telemetry.ServerPrefix)
	l := &local{store: openStore(t)}
	newManager := func() {
		m, err := NewManager(ManagerConfig{TrustDomain: localTD, Store: l.store, Static: []Relationship{spiffeRelationship(p)},
			Intervals: fastIntervals, Metrics: telemetry.NewServer(reg)})
		if err != nil {
			t.Fatal(err)
		}
		l.m = m
	}
	newManager()
	if _, err := l.store.SetBundle(context.Background(), p.bundle()); err != nil {
		t.Fatal(err)
	}
	l.run(t)
	eventually(t, "a refresh", func() bool { return !l.status(t, peerTD).LastSuccess.IsZero() })
	first := l.status(t, peerTD).LastSuccess
	l.stop()
	p.stop()

	// A new registry and manager, as after a restart, the peer down.
	reg = telemetry.NewRegistry(telemetry.ServerPrefix)
	newManager()
	l.run(t)
	eventually(t, "a failure after the restart", func() bool { return l.status(t, peerTD).Failures > 0 })
	if s := l.status(t, peerTD); s.LastSuccess.Unix() != first.Unix() {
		t.Fatalf("last success across a restart: %v, want %v", s.LastSuccess, first)
	}
	samples, err := telemetrytest.ScrapeHandler(reg.Handler())
	if err != nil {
		t.Fatal(err)
	}
	if v := samples.Get("sigil_server_federation_bundle_last_refresh_timestamp_seconds", "trust_domain", "peer.test"); int64(v) != first.Unix() {
		t.Errorf("last refresh gauge after a restart = %v, want %d", v, first.Unix())
	}
	if v := samples.Get("sigil_server_federation_bundle_refreshes_total", "trust_domain", "peer.test", "result", "error"); v < 1 {
		t.Errorf("failed refreshes counted %v", v)
	}
	if v, ok := samples.Value("sigil_server_federation_bundle_refreshes_total", "trust_domain", "peer.test", "result", "success"); ok && v != 0 {
		t.Errorf("the restored time counted as a refresh: %v", v)
	}
}

// The https_web profile: a Web PKI certificate from files, reloaded, and
// a client verifying it against Web PKI roots.
func TestHTTPSWeb(t *testing.T) {
	web := testca.New(t, testca.Subject("test Web PKI root"))
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "be.crt"), filepath.Join(dir, "be.key")
	writeServing := func() *x509.Certificate {
		c, k := web.Leaf(t, testca.DNSNames("localhost"), testca.ExtKeyUsage(x509.ExtKeyUsageServerAuth),
			testca.Template(func(c *x509.Certificate) { c.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)} }))
		testca.WriteCertsPEM(t, certPath, c)
		testca.WriteKeyPEM(t, keyPath, k)
		return c
	}
	first := writeServing()
	sc, err := LoadServingCert(certPath, keyPath, 50*time.Millisecond, nil, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = sc.Run(ctx) }()

	store := openStore(t)
	ca := testca.New(t, testca.TrustDomain(peerTD))
	if _, err := store.SetBundle(ctx, &datastore.Bundle{TrustDomain: peerTD.Name(), X509Authorities: []datastore.X509Authority{{ASN1: ca.Cert.Raw}}}); err != nil {
		t.Fatal(err)
	}
	e, err := NewEndpoint(EndpointConfig{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, TrustDomain: peerTD,
		Source: NewOwnBundleSource(peerTD, store, time.Second, nil), GetCertificate: sc.GetCertificate})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = e.Run(ctx) }()
	<-e.Ready()
	url := "https://" + e.Addr().String()
	roots := x509.NewCertPool()
	roots.AddCert(web.Cert)
	b, err := federation.FetchBundle(ctx, peerTD, url, federation.WithWebPKIRoots(roots))
	if err != nil {
		t.Fatal(err)
	}
	if !b.HasX509Authority(ca.Cert) {
		t.Fatal("bundle lacks the authority")
	}
	served := func() *x509.Certificate {
		c, err := tls.Dial("tcp", e.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "localhost"})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0]
	}
	if !served().Equal(first) {
		t.Fatal("not serving the certificate of the files")
	}
	second := writeServing()
	eventually(t, "the reloaded certificate served", func() bool { return served().Equal(second) })

	// A manager's https_web relationship with these roots.
	l := newLocal(t, []Relationship{{TrustDomain: peerTD, BundleEndpointURL: url, Profile: datastore.ProfileHTTPSWeb}}, roots)
	l.run(t)
	eventually(t, "an https_web refresh", func() bool { return l.has(t, peerTD, ca.Cert) })

	// https_web against an endpoint presenting an SVID: the error says
	// what is wrong.
	p := newPeer(t, time.Second)
	svidRoots := x509.NewCertPool()
	svidRoots.AddCert(p.ca.Cert)
	l2 := newLocal(t, []Relationship{{TrustDomain: peerTD, BundleEndpointURL: p.url(), Profile: datastore.ProfileHTTPSWeb}}, svidRoots)
	l2.run(t)
	eventually(t, "a hostname error explained", func() bool {
		return strings.Contains(l2.status(t, peerTD).LastError, "its profile is probably https_spiffe")
	})
}

// sanity: the bundle conversions keep what is compared.
func TestSameContent(t *testing.T) {
	ca := testca.New(t, testca.TrustDomain(peerTD))
	sb := spiffebundle.FromX509Authorities(peerTD, ca.Roots())
	sb.SetRefreshHint(90 * time.Second)
	sb.SetSequenceNumber(7)
	b, err := fromSPIFFE(sb)
	if err != nil {
		t.Fatal(err)
	}
	c := *b
	c.SequenceNumber = 99
	c.X509Authorities = []datastore.X509Authority{{ASN1: ca.Cert.Raw, Tainted: true}}
	if !sameContent(b, &c) {
		t.Error("sequence number or taint counted as a change")
	}
	c.RefreshHint = 91
	if sameContent(b, &c) {
		t.Error("refresh hint change not seen")
	}
	back, err := toSPIFFE(peerTD, b)
	if err != nil || !back.Equal(sb) {
		t.Errorf("round trip: %v, %v", back, err)
	}
}

// A trust domain cut off from its peer for days (on a fake clock): the
// last bundle stays, an attempt is made at least once per refresh
// interval, the status and the metric say how old the bundle is, and the
// log does not get a line per attempt. The link back, the next attempt
// refreshes it.
func TestCutOffForDays(t *testing.T) {
	p := newPeer(t, time.Hour)
	clk := clock.NewFake(time.Now())
	reg := telemetry.NewRegistry(telemetry.ServerPrefix)
	var logs syncBuffer
	l := &local{store: openStore(t)}
	m, err := NewManager(ManagerConfig{TrustDomain: localTD, Store: l.store, Static: []Relationship{spiffeRelationship(p)},
		Intervals: Intervals{Reload: 1000 * time.Hour}, Metrics: telemetry.NewServer(reg), Clock: clk,
		Log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	if err != nil {
		t.Fatal(err)
	}
	l.m = m
	if _, err := l.store.SetBundle(context.Background(), p.bundle()); err != nil {
		t.Fatal(err)
	}
	l.run(t)
	eventually(t, "a first refresh", func() bool { return !l.status(t, peerTD).LastSuccess.IsZero() })
	refreshed := l.status(t, peerTD).LastSuccess
	kept := l.bundle(t, peerTD)
	p.stop()

	// advance moves the fake clock to the next scheduled attempt and waits
	// for it to be made. The fake clock's timers: the manager's reload
	// (never due here) and the refresher's next attempt.
	advance := func() Status {
		t.Helper()
		before := l.status(t, peerTD)
		eventually(t, "the next attempt scheduled", func() bool { return clk.Waiters() == 2 })
		next := l.status(t, peerTD).NextAttempt
		clk.Set(next)
		var after Status
		eventually(t, "the attempt made", func() bool {
			after = l.status(t, peerTD)
			return after.Attempts > before.Attempts && after.NextAttempt.After(next)
		})
		return after
	}
	start := clk.Now()
	for clk.Now().Sub(start) < 3*24*time.Hour {
		prev := l.status(t, peerTD)
		st := advance()
		if gap := st.LastAttempt.Sub(prev.LastAttempt); gap > time.Hour {
			t.Fatalf("%v between two attempts, more than the refresh interval (1h)", gap)
		}
	}
	st := l.status(t, peerTD)
	age, ok := st.BundleAge()
	if !ok || age < 3*24*time.Hour || !st.LastSuccess.Equal(refreshed) || st.ConsecutiveFailures < 72 {
		t.Fatalf("after three days cut off: age %v, %+v", age, st)
	}
	if b := l.bundle(t, peerTD); b.SequenceNumber != kept.SequenceNumber {
		t.Fatalf("the bundle changed while cut off: %+v", b)
	}
	samples, err := telemetrytest.ScrapeHandler(reg.Handler())
	if err != nil {
		t.Fatal(err)
	}
	if v := samples.Get("sigil_server_federation_bundle_last_refresh_timestamp_seconds", "trust_domain", "peer.test"); int64(v) != refreshed.Unix() {
		t.Errorf("last refresh gauge %v, want %d (3 days ago)", v, refreshed.Unix())
	}
	if n := strings.Count(logs.String(), "Could not refresh a federated bundle"); n == 0 || n > st.ConsecutiveFailures/10+2 {
		t.Errorf("%d warnings for %d failed attempts", n, st.ConsecutiveFailures)
	}
	oldest := 0
	for _, m := range regexp.MustCompile(`bundle_age=(\d+)h`).FindAllStringSubmatch(logs.String(), -1) {
		h, _ := strconv.Atoi(m[1])
		oldest = max(oldest, h)
	}
	if oldest < 60 {
		t.Errorf("no warning says the bundle is days old (oldest bundle_age %dh)", oldest)
	}

	// The link is back: the next attempt refreshes.
	p.start()
	st = advance()
	if st.ConsecutiveFailures != 0 || !st.LastSuccess.After(refreshed) {
		t.Fatalf("after the link came back: %+v", st)
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
