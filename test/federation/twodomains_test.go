package federation

import (
	"context"
	"crypto/x509"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/internal/adminclient"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// refreshHint is what each bundle endpoint of these tests tells its peers
// (the shortest Sigil honors).
const refreshHint = 5 * time.Second

// domain is a trust domain of these tests: a real sigil-server with an
// https_spiffe bundle endpoint, a real sigil-agent, and the test process
// registered as its workload app, federating with the other domain.
type domain struct {
	srv   *testutil.Server
	agent *testutil.Agent
	app   spiffeid.ID
	// ns is the network namespace server and agent run in ("": the
	// host's).
	ns string
}

// wrap is the command prefix running a process in d's namespace.
func (d *domain) wrap() []string {
	if d.ns == "" {
		return nil
	}
	return []string{"ip", "netns", "exec", d.ns}
}

func (d *domain) td() spiffeid.TrustDomain { return d.srv.TrustDomain() }

// source is a go-spiffe X509Source of the app on the domain's agent.
func (d *domain) source(t *testing.T) *workloadapi.X509Source {
	return testutil.NewX509Source(t, d.agent.SocketAddr(), testutil.PickID(d.app))
}

func (d *domain) bundleCerts(t *testing.T) []*x509.Certificate { return d.srv.Admin(t).BundleCerts(t) }

// newDomains starts cloud.test and edge.test federated both ways over
// https_spiffe: cloud through its configuration (bootstrapped with bundle
// set), edge through the trustdomain API (bootstrapped with the
// relationship), as an operator does each. cloudCfg may set more of
// cloud's configuration. With a partition, cloud runs in its server
// namespace and edge in its device namespace, each server and bundle
// endpoint on its namespace's address.
func newDomains(t *testing.T, cloudCfg testutil.ServerConfig, p *testutil.Partition) (cloud, edge *domain) {
	t.Helper()
	cloudPort, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	edgePort, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cloudCfg.TrustDomain = cloudTD.Name()
	cloudCfg.BundleEndpoint = &testutil.BundleEndpoint{Port: cloudPort, RefreshHint: refreshHint}
	edgeCfg := testutil.ServerConfig{TrustDomain: edgeTD.Name(), BundleEndpoint: &testutil.BundleEndpoint{Port: edgePort, RefreshHint: refreshHint}}
	cloudCfg.FederatesWith = append(cloudCfg.FederatesWith, testutil.FederatesWith{TrustDomain: edgeTD.Name(), URL: edgeCfg.BundleEndpoint.URL(),
		EndpointSPIFFEID: "spiffe://edge.test/spire/server"})
	cloud, edge = &domain{}, &domain{}
	if p != nil {
		cloud.ns, edge.ns = p.ServerNS, p.AgentNS
		cloudCfg.BindAddress, cloudCfg.BundleEndpoint.Address = p.ServerIP, p.ServerIP
		edgeCfg.BindAddress, edgeCfg.BundleEndpoint.Address = p.AgentIP, p.AgentIP
		cloudCfg.FederatesWith[len(cloudCfg.FederatesWith)-1].URL = edgeCfg.BundleEndpoint.URL()
	}
	cloud.srv = testutil.NewServer(t, cloudCfg, cloud.wrap()...)
	edge.srv = testutil.StartServer(t, edgeCfg, edge.wrap()...)
	return cloud, edge
}

// start starts cloud (whose configuration may have been edited), then
// bootstraps both relationships and runs an agent and an app entry in
// each domain.
func startDomains(t *testing.T, cloud, edge *domain) {
	t.Helper()
	cloud.srv.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	edgeBundle, err := edge.srv.Admin(t).SPIFFEBundle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cloud.srv.Admin(t).SetFederatedBundle(t, edgeBundle)
	var roots []*types.X509Certificate
	for _, c := range cloud.bundleCerts(t) {
		roots = append(roots, &types.X509Certificate{Asn1: c.Raw})
	}
	edge.srv.Admin(t).CreateFederationRelationship(t, &types.FederationRelationship{
		TrustDomain: cloudTD.Name(), BundleEndpointUrl: cloud.srv.Config.BundleEndpoint.URL(),
		BundleEndpointProfile: &types.FederationRelationship_HttpsSpiffe{HttpsSpiffe: &types.HTTPSSPIFFEProfile{EndpointSpiffeId: "spiffe://cloud.test/spire/server"}},
		TrustDomainBundle:     &types.Bundle{TrustDomain: cloudTD.Name(), X509Authorities: roots},
	})
	for _, d := range []struct{ self, peer *domain }{{cloud, edge}, {edge, cloud}} {
		cfg := testutil.AgentFor(t, d.self.srv, "/agent", "")
		var err error
		if cfg.HealthPort, err = testutil.FreePort(); err != nil {
			t.Fatal(err)
		}
		d.self.agent = testutil.StartAgent(t, cfg, d.self.wrap()...)
		d.self.app = d.self.srv.ID("/app")
		e, err := adminclient.NewEntry(d.self.app, d.self.srv.ID("/agent"), uidSelector)
		if err != nil {
			t.Fatal(err)
		}
		e.FederatesWith = []string{d.peer.td().Name()}
		d.self.srv.Admin(t).CreateEntries(t, e)
	}
	cloud.srv.Admin(t).WaitFederationRefreshed(t, edgeTD.Name(), time.Time{}, deadline)
	edge.srv.Admin(t).WaitFederationRefreshed(t, cloudTD.Name(), time.Time{}, deadline)
}

// mtlsWorkloads completes a go-spiffe mTLS exchange between two workloads,
// each authorizing the other by trust domain with the bundles its Workload
// API serves.
func mtlsWorkloads(server, client *workloadapi.X509Source, serverTD, clientTD spiffeid.TrustDomain) error {
	return testutil.MTLSExchange(
		tlsconfig.MTLSServerConfig(server, server, tlsconfig.AuthorizeMemberOf(clientTD)),
		tlsconfig.MTLSClientConfig(client, client, tlsconfig.AuthorizeMemberOf(serverTD)), deadline)
}

// expectMutualTLS waits until the two domains' workloads complete mTLS
// both ways (bundles reach workloads within milliseconds of a change).
func expectMutualTLS(t *testing.T, a, b *domain, sa, sb *workloadapi.X509Source) {
	t.Helper()
	var last error
	err := testutil.Poll(deadline, 50*time.Millisecond, func() (bool, error) {
		last = mtlsWorkloads(sa, sb, a.td(), b.td())
		if last == nil {
			last = mtlsWorkloads(sb, sa, b.td(), a.td())
		}
		return last == nil, nil
	})
	if err != nil {
		t.Fatalf("mTLS between %s and %s workloads: %v (last: %v)", a.td().Name(), b.td().Name(), err, last)
	}
}

func hasCert(cs []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range cs {
		if x.Equal(c) {
			return true
		}
	}
	return false
}

// bundleOf is the bundle of td that src serves (nil when none).
func bundleOf(src *workloadapi.X509Source, td spiffeid.TrustDomain) []*x509.Certificate {
	b, err := src.GetX509BundleForTrustDomain(td)
	if err != nil {
		return nil
	}
	return b.X509Authorities()
}

// TestTwoTrustDomains: cloud.test and edge.test, each a real server and
// agent, federate both ways over https_spiffe (cloud also with a partner
// over https_web, through a test Web PKI), and their workloads complete
// go-spiffe mTLS authorizing each other by trust domain. The link is cut
// (edge's server stopped): both sides keep serving the last bundle, agents
// restarted meanwhile too; back, each refreshes with no manual step.
func TestTwoTrustDomains(t *testing.T) {
	t.Parallel()
	// partner.test: an https_web bundle endpoint with a certificate of a
	// test Web PKI, which cloud's server trusts as its system roots.
	partnerPort, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	webRoot := testca.New(t, testca.Subject("Sigil test Web PKI root"))
	dir := testutil.ShortTempDir(t)
	cert, key := webRoot.Leaf(t, testca.DNSNames("localhost"), testca.ExtKeyUsage(x509.ExtKeyUsageServerAuth),
		testca.Template(func(c *x509.Certificate) { c.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)} }))
	partner := testutil.StartServer(t, testutil.ServerConfig{TrustDomain: "partner.test", BundleEndpoint: &testutil.BundleEndpoint{
		Port: partnerPort, RefreshHint: refreshHint,
		CertFile: testca.WriteCertsPEM(t, filepath.Join(dir, "web.crt"), cert), KeyFile: testca.WriteKeyPEM(t, filepath.Join(dir, "web.key"), key)}})

	cloud, edge := newDomains(t, testutil.ServerConfig{}, nil)
	cloud.srv.Env = []string{"SSL_CERT_FILE=" + testca.WriteCertsPEM(t, filepath.Join(dir, "roots.pem"), webRoot.Cert)}
	startDomains(t, cloud, edge)
	cloud.srv.Admin(t).CreateFederationRelationship(t, &types.FederationRelationship{
		TrustDomain: "partner.test", BundleEndpointUrl: partner.Config.BundleEndpoint.URL(),
		BundleEndpointProfile: &types.FederationRelationship_HttpsWeb{HttpsWeb: &types.HTTPSWebProfile{}},
	})

	cloudSrc, edgeSrc := cloud.source(t), edge.source(t)
	expectMutualTLS(t, cloud, edge, cloudSrc, edgeSrc)

	// The https_web relationship fetched partner.test's bundle.
	cloud.srv.Admin(t).WaitFederationRefreshed(t, "partner.test", time.Time{}, deadline)
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	fb, err := cloud.srv.Admin(t).Bundle.GetFederatedBundle(ctx, &bundlev1.GetFederatedBundleRequest{TrustDomain: "partner.test"})
	if err != nil {
		t.Fatal(err)
	}
	if want := partner.Admin(t).BundleCerts(t); len(fb.X509Authorities) != len(want) || string(fb.X509Authorities[0].Asn1) != string(want[0].Raw) {
		t.Fatalf("cloud's bundle of partner.test: %d authorities, partner has %d", len(fb.X509Authorities), len(want))
	}

	// The link is cut: edge's server stops. cloud keeps edge's bundle and
	// reports the failures; both agents restart meanwhile (edge's with no
	// server at all) and the workloads still complete mTLS.
	cut := time.Now()
	edge.srv.Stop(t)
	if err := testutil.Poll(deadline, 50*time.Millisecond, func() (bool, error) {
		st, ok := cloud.srv.Admin(t).FederationStatus(t, edgeTD.Name())
		return ok && st.ConsecutiveFailures > 0 && st.LastErrorAt.After(cut), nil
	}); err != nil {
		t.Fatalf("cloud reports no failure to reach edge: %v", err)
	}
	if st, _ := cloud.srv.Admin(t).FederationStatus(t, edgeTD.Name()); st.ConsecutiveFailures == 0 || st.BundleAgeSeconds == nil {
		t.Fatalf("cloud's status of edge.test while cut off: %+v", st)
	}
	cloud.agent.Stop(t)
	edge.agent.Stop(t)
	cloud.agent.Start(t)
	edge.agent.Start(t)
	cloudSrc, edgeSrc = cloud.source(t), edge.source(t)
	if bundleOf(cloudSrc, edgeTD) == nil || bundleOf(edgeSrc, cloudTD) == nil {
		t.Fatal("a restarted agent lost the federated bundle while the link is cut")
	}
	expectMutualTLS(t, cloud, edge, cloudSrc, edgeSrc)

	// The link is back: both refresh by themselves.
	back := time.Now()
	edge.srv.Start(t)
	cloud.srv.Admin(t).WaitFederationRefreshed(t, edgeTD.Name(), back, deadline)
	edge.srv.Admin(t).WaitFederationRefreshed(t, cloudTD.Name(), back, deadline)
	expectMutualTLS(t, cloud, edge, cloudSrc, edgeSrc)
}

// TestCARotationReachesFederatedWorkloads: cloud.test's CA rotates (a one
// minute ca_ttl: the next CA is published at 30s, signs from 50s); the new
// CA reaches edge.test's workload through edge's refresher, within
// cloud's refresh hint, before it signs anything, so the workloads keep
// completing mTLS across the rotation.
func TestCARotationReachesFederatedWorkloads(t *testing.T) {
	t.Parallel()
	cloud, edge := newDomains(t, testutil.ServerConfig{CATTL: time.Minute, X509SVIDTTL: 10 * time.Second}, nil)
	startDomains(t, cloud, edge)
	cloudSrc, edgeSrc := cloud.source(t), edge.source(t)
	expectMutualTLS(t, cloud, edge, cloudSrc, edgeSrc)
	expectJWTAcross(t, cloud, edge)
	first := cloud.bundleCerts(t)
	if len(first) != 1 {
		t.Fatalf("cloud's bundle has %d authorities at start", len(first))
	}

	// The next CA is published in cloud's bundle.
	var next *x509.Certificate
	if err := testutil.Poll(2*time.Minute, 100*time.Millisecond, func() (bool, error) {
		for _, c := range cloud.bundleCerts(t) {
			if !c.Equal(first[0]) {
				next = c
			}
		}
		return next != nil, nil
	}); err != nil {
		t.Fatalf("cloud's CA did not rotate: %v", err)
	}
	published := time.Now()
	if err := testutil.Poll(2*time.Minute, 20*time.Millisecond, func() (bool, error) {
		return hasCert(bundleOf(edgeSrc, cloudTD), next), nil
	}); err != nil {
		t.Fatalf("cloud's new CA never reached edge's workload: %v", err)
	}
	t.Logf("cloud's new CA reached edge's workload %v after it was seen in cloud's bundle (refresh hint %v)", time.Since(published).Round(time.Millisecond), refreshHint)

	// Once it signs cloud's workload SVID, mTLS still works.
	if err := testutil.Poll(2*time.Minute, 100*time.Millisecond, func() (bool, error) {
		svid, err := cloudSrc.GetX509SVID()
		if err != nil {
			return false, nil
		}
		_, _, err = x509svid.Verify(svid.Certificates, x509bundle.FromX509Authorities(cloudTD, []*x509.Certificate{next}))
		return err == nil, nil
	}); err != nil {
		t.Fatalf("cloud's workload never got an SVID of the new CA: %v", err)
	}
	expectMutualTLS(t, cloud, edge, cloudSrc, edgeSrc)
	// cloud's JWT key rotates with its CA: its new tokens validate at edge.
	expectJWTAcross(t, cloud, edge)
}
