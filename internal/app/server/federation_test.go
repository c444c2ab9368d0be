package server_test

import (
	"context"
	"crypto/x509"
	"log/slog"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	trustdomainv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/trustdomain/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/internal/app/server"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/inproc"
)

// fedServer is an in-process server with an https_spiffe bundle endpoint
// on a port known before it starts.
type fedServer struct {
	td   spiffeid.TrustDomain
	cfg  *config.Server
	port int
	srv  *inproc.Server
}

func newFedServer(t *testing.T, name string) *fedServer {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString(name)
	dir := testutil.ShortTempDir(t)
	port, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg := inproc.ServerConfig(td, filepath.Join(dir, "data"), filepath.Join(dir, "api.sock"), 0)
	cfg.Federation = &config.Federation{BundleEndpoint: &config.BundleEndpoint{Address: "127.0.0.1", Port: port, RefreshHint: 5 * time.Second, Profile: config.ProfileHTTPSSPIFFE}}
	return &fedServer{td: td, cfg: cfg, port: port}
}

func (s *fedServer) url() string { return "https://127.0.0.1:" + strconv.Itoa(s.port) }

func (s *fedServer) federateWith(peer *fedServer) {
	u, _ := url.Parse(peer.url())
	s.cfg.Federation.FederatesWith = append(s.cfg.Federation.FederatesWith, config.FederatesWith{
		TrustDomain: peer.td, BundleEndpointURL: u, Profile: config.ProfileHTTPSSPIFFE,
		EndpointSPIFFEID: spiffeid.RequireFromPath(peer.td, "/spire/server")})
}

func (s *fedServer) start(t *testing.T) {
	t.Helper()
	s.srv = inproc.RunServer(t, s.cfg, nil, server.Options{})
	select {
	case <-s.srv.Srv.BundleEndpoint().Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("bundle endpoint not listening")
	}
}

func (s *fedServer) bundle(t *testing.T) *types.Bundle {
	t.Helper()
	b, err := s.srv.Admin(t).Bundle.GetBundle(context.Background(), &bundlev1.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (s *fedServer) federatedBundle(t *testing.T, td spiffeid.TrustDomain) *types.Bundle {
	t.Helper()
	b, err := s.srv.Admin(t).Bundle.GetFederatedBundle(context.Background(), &bundlev1.GetFederatedBundleRequest{TrustDomain: td.Name()})
	if err != nil {
		return nil
	}
	return b
}

func (s *fedServer) setFederatedBundle(t *testing.T, b *types.Bundle) {
	t.Helper()
	resp, err := s.srv.Admin(t).Bundle.BatchSetFederatedBundle(context.Background(), &bundlev1.BatchSetFederatedBundleRequest{Bundle: []*types.Bundle{{TrustDomain: b.TrustDomain, X509Authorities: b.X509Authorities}}})
	if err != nil || resp.Results[0].Status.Code != 0 {
		t.Fatalf("bundle set: %v, %v", resp, err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Two servers federate both ways through their https_spiffe bundle
// endpoints, authenticated by their SVIDs spiffe://<td>/spire/server: one
// through its configuration (bootstrapped by bundle set), the other
// through the trustdomain API (bootstrapped with the relationship).
func TestTwoServersFederate(t *testing.T) {
	cloud, edge := newFedServer(t, "cloud.test"), newFedServer(t, "edge.test")
	cloud.federateWith(edge)
	cloud.start(t)
	edge.start(t)

	// The endpoint presents spiffe://<td>/spire/server and serves the
	// bundle with the configured refresh hint.
	roots := make([]*x509.Certificate, 0)
	for _, a := range edge.bundle(t).X509Authorities {
		c, _ := x509.ParseCertificate(a.Asn1)
		roots = append(roots, c)
	}
	got, err := federation.FetchBundle(context.Background(), edge.td, edge.url(),
		federation.WithSPIFFEAuth(x509bundle.FromX509Authorities(edge.td, roots), spiffeid.RequireFromPath(edge.td, "/spire/server")))
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := got.RefreshHint(); h != 5*time.Second || len(got.JWTAuthorities()) == 0 {
		t.Errorf("edge's bundle endpoint served hint %v, %d JWT keys", h, len(got.JWTAuthorities()))
	}

	// cloud: configuration relationship, bootstrapped with bundle set.
	cloud.setFederatedBundle(t, edge.bundle(t))
	// edge: API relationship with the bootstrap bundle.
	b := cloud.bundle(t)
	resp, err := trustdomainv1.NewTrustDomainClient(edge.srv.Admin(t).Conn).BatchCreateFederationRelationship(context.Background(),
		&trustdomainv1.BatchCreateFederationRelationshipRequest{FederationRelationships: []*types.FederationRelationship{{
			TrustDomain: "cloud.test", BundleEndpointUrl: cloud.url(),
			BundleEndpointProfile: &types.FederationRelationship_HttpsSpiffe{HttpsSpiffe: &types.HTTPSSPIFFEProfile{EndpointSpiffeId: "spiffe://cloud.test/spire/server"}},
			TrustDomainBundle:     &types.Bundle{TrustDomain: "cloud.test", X509Authorities: b.X509Authorities},
		}}})
	if err != nil || resp.Results[0].Status.Code != 0 {
		t.Fatalf("create relationship: %v, %v", resp, err)
	}

	// Each gets the other's whole bundle (JWT keys included) from its
	// endpoint.
	for _, c := range []struct{ s, peer *fedServer }{{cloud, edge}, {edge, cloud}} {
		waitFor(t, c.s.td.Name()+" refreshing "+c.peer.td.Name(), func() bool {
			st, _ := c.s.srv.Srv.Federation().Status(c.peer.td)
			fb := c.s.federatedBundle(t, c.peer.td)
			return !st.LastSuccess.IsZero() && fb != nil && len(fb.JwtAuthorities) > 0 && fb.RefreshHint == 5
		})
		st, ok := c.s.srv.Srv.Federation().Status(c.peer.td)
		if !ok || st.LastSuccess.IsZero() || st.ConsecutiveFailures != 0 || st.Interval != 5*time.Second {
			t.Errorf("%s's status of %s: %+v", c.s.td.Name(), c.peer.td.Name(), st)
		}
	}
}

// validate checks the https_web serving files and the endpoint address.
func TestPreflightChecksBundleEndpoint(t *testing.T) {
	s := newFedServer(t, "cloud.test")
	s.cfg.Federation.BundleEndpoint.Profile = config.ProfileHTTPSWeb
	s.cfg.Federation.BundleEndpoint.ServingCertFile = &config.ServingCertFile{CertFilePath: "/nonexistent/be.crt", KeyFilePath: "/nonexistent/be.key", FileSyncInterval: time.Hour}
	err := server.Preflight(s.cfg, nil)
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/be.crt") {
		t.Fatalf("Preflight = %v", err)
	}
	s.cfg.Federation.BundleEndpoint.Profile = config.ProfileHTTPSSPIFFE
	s.cfg.Federation.BundleEndpoint.Address = "no such host.invalid"
	if err := server.Preflight(s.cfg, nil); err == nil || !strings.Contains(err.Error(), "federation.bundle_endpoint address") {
		t.Fatalf("Preflight = %v", err)
	}
}

// conf/federation's pair is valid, federates both ways over https_spiffe
// and serves each other's endpoint URL.
func TestFederationExampleConfs(t *testing.T) {
	cfgs := map[string]*config.Server{}
	for _, name := range []string{"cloud", "edge"} {
		cfg, err := server.Load([]string{"-config", "../../../conf/federation/" + name + ".conf"})
		if err != nil {
			t.Fatal(err)
		}
		if err := server.Preflight(cfg, slog.New(slog.DiscardHandler)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		cfgs[cfg.TrustDomain.Name()] = cfg
	}
	for td, cfg := range cfgs {
		f := cfg.Federation
		if f == nil || f.BundleEndpoint == nil || f.BundleEndpoint.Profile != config.ProfileHTTPSSPIFFE || len(f.FederatesWith) != 1 {
			t.Fatalf("%s: federation %+v", td, f)
		}
		fw := f.FederatesWith[0]
		peer := cfgs[fw.TrustDomain.Name()]
		if peer == nil || fw.Profile != config.ProfileHTTPSSPIFFE || fw.EndpointSPIFFEID.String() != "spiffe://"+peer.TrustDomain.Name()+"/spire/server" ||
			fw.BundleEndpointURL.String() != "https://"+peer.Federation.BundleEndpoint.Address+":"+strconv.Itoa(peer.Federation.BundleEndpoint.Port) {
			t.Errorf("%s federates with %v", td, fw)
		}
	}
}

// A bundle endpoint without a profile runs as https_spiffe with SPIRE's
// warning, at run as at validate.
func TestRunWarnsDefaultedProfile(t *testing.T) {
	s := newFedServer(t, "cloud.test")
	s.cfg.Federation.BundleEndpoint.ProfileDefaulted = true
	var logs strings.Builder
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return logs.Write(p)
	}), nil))
	srv := inproc.RunServer(t, s.cfg, log, server.Options{})
	srv.StopT(t)
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logs.String(), "Bundle endpoint is configured but has no profile set, using https_spiffe as default") {
		t.Fatalf("no warning in:\n%s", logs.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
