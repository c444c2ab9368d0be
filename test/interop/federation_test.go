package interop

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	localauthorityv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/localauthority/v1"
	trustdomainv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/trustdomain/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/internal/adminclient"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

var sigilTD, spireTD = spiffeid.RequireTrustDomainFromString("cloud.test"), spiffeid.RequireTrustDomainFromString("edge.test")

// spireFederation is a sigil-server (cloud.test) and a spire-server
// (edge.test) federated with each other, and in each trust domain a
// workload behind a sigil-agent and one behind a spire-agent.
type spireFederation struct {
	sigil, spire         *testutil.Server
	sigilSide, spireSide []*fedWorkload
}

// federateWithSPIRE: a sigil-server (cloud.test, sigilCfg plus the
// federation) and a spire-server (edge.test) federate with each other
// through their bundle endpoints (https_spiffe, each authenticated by its
// server's SVID spiffe://<td>/spire/server), from the same kind of
// configuration, each bootstrapped with the other's X.509 authorities
// only: each then holds the other's whole bundle (JWT keys and refresh
// hint, from the endpoint). In each trust domain a workload behind a
// sigil-agent and one behind a spire-agent (each server hands its
// federated bundle to both kinds of agent) complete go-spiffe mTLS with
// every workload of the other domain, authorizing it by trust domain, and
// their JWT-SVIDs validate through the other domain's agents.
//
// spireByAPI creates spire-server's relationship through its trustdomain
// API with sigil-server's bundle (as `spire-server federation create
// -trustDomainBundlePath`) instead of its configuration file: its first
// fetch then succeeds and it polls at sigil-server's refresh hint from the
// start, where a configured relationship without a bundle is retried a
// minute after its first failure, RefreshBundle notwithstanding.
func federateWithSPIRE(t *testing.T, sigilCfg testutil.ServerConfig, spireByAPI bool) *spireFederation {
	t.Helper()
	testutil.SPIREBinaries(t)
	sigilPort, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	spirePort, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	sigilEP := &testutil.BundleEndpoint{Port: sigilPort, RefreshHint: 5 * time.Second}
	spireEP := &testutil.BundleEndpoint{Port: spirePort, RefreshHint: 5 * time.Second}
	sigilCfg.TrustDomain, sigilCfg.BundleEndpoint = sigilTD.Name(), sigilEP
	sigilCfg.FederatesWith = []testutil.FederatesWith{{TrustDomain: spireTD.Name(), URL: spireEP.URL(), EndpointSPIFFEID: "spiffe://edge.test/spire/server"}}
	sigil := testutil.StartServer(t, sigilCfg)
	spireCfg := testutil.ServerConfig{TrustDomain: spireTD.Name(), BundleEndpoint: spireEP}
	toSigil := testutil.FederatesWith{TrustDomain: sigilTD.Name(), URL: sigilEP.URL(), EndpointSPIFFEID: "spiffe://cloud.test/spire/server"}
	if !spireByAPI {
		spireCfg.FederatesWith = []testutil.FederatesWith{toSigil}
	}
	spire := testutil.StartSPIREServer(t, spireCfg)

	// Bootstrap: each gets the other's X.509 authorities (bundle set).
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	for _, p := range []struct{ to, from *testutil.Server }{{sigil, spire}, {spire, sigil}} {
		b, err := p.from.Admin(t).SPIFFEBundle(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if p.to == spire && spireByAPI {
			roots := make([]*types.X509Certificate, 0, len(b.X509Authorities()))
			for _, c := range b.X509Authorities() {
				roots = append(roots, &types.X509Certificate{Asn1: c.Raw})
			}
			spire.Admin(t).CreateFederationRelationship(t, &types.FederationRelationship{TrustDomain: toSigil.TrustDomain, BundleEndpointUrl: toSigil.URL,
				BundleEndpointProfile: &types.FederationRelationship_HttpsSpiffe{HttpsSpiffe: &types.HTTPSSPIFFEProfile{EndpointSpiffeId: toSigil.EndpointSPIFFEID}},
				TrustDomainBundle:     &types.Bundle{TrustDomain: toSigil.TrustDomain, X509Authorities: roots}})
			continue
		}
		p.to.Admin(t).SetFederatedBundle(t, spiffebundle.FromX509Authorities(b.TrustDomain(), b.X509Authorities()))
	}
	// spire-server retries a relationship without a bundle once a minute:
	// ask it now (RefreshBundle, as `spire-server federation refresh`).
	if err := testutil.Poll(deadline, 200*time.Millisecond, func() (bool, error) {
		_, err := spire.Admin(t).TrustDomainClient().RefreshBundle(ctx, &trustdomainv1.RefreshBundleRequest{TrustDomain: sigilTD.Name()})
		return err == nil, nil
	}); err != nil {
		t.Fatalf("spire-server could not fetch sigil-server's bundle: %v\n%s", err, spire.Proc.Logs())
	}
	sigil.Admin(t).WaitFederationRefreshed(t, spireTD.Name(), time.Time{}, deadline)

	// Each holds the other's whole bundle, as its endpoint serves it.
	for _, p := range []struct {
		holder, owner *testutil.Server
		hint          int64
	}{{sigil, spire, 5}, {spire, sigil, 5}} {
		own, err := p.owner.Admin(t).Bundle.GetBundle(ctx, &bundlev1.GetBundleRequest{})
		if err != nil {
			t.Fatal(err)
		}
		fb, err := p.holder.Admin(t).Bundle.GetFederatedBundle(ctx, &bundlev1.GetFederatedBundleRequest{TrustDomain: p.owner.Config.TrustDomain})
		if err != nil {
			t.Fatal(err)
		}
		if !sameAuthorities(own, fb) || len(fb.JwtAuthorities) == 0 || fb.RefreshHint != p.hint {
			t.Errorf("%s's bundle of %s: %d X.509 and %d JWT authorities, refresh hint %d; %s publishes %d and %d (hint %d)",
				p.holder.Name(), p.owner.Name(), len(fb.X509Authorities), len(fb.JwtAuthorities), fb.RefreshHint,
				p.owner.Name(), len(own.X509Authorities), len(own.JwtAuthorities), p.hint)
		}
	}

	// In each trust domain a workload behind a sigil-agent and one behind
	// a spire-agent, each entry federating with the other domain.
	var sigilSide, spireSide []*fedWorkload
	for _, r := range []struct {
		srv      *testutil.Server
		federate spiffeid.TrustDomain
		side     *[]*fedWorkload
	}{{sigil, spireTD, &sigilSide}, {spire, sigilTD, &spireSide}} {
		for _, kind := range []string{"sigil-agent", "spire-agent"} {
			node := r.srv.ID("/node/" + kind)
			w := &fedWorkload{name: kind + " of " + r.srv.Name(), td: r.srv.TrustDomain(), id: r.srv.ID("/app/" + kind)}
			cfg := testutil.AgentFor(t, r.srv, node.Path(), "")
			if kind == "sigil-agent" {
				w.agent = testutil.StartAgent(t, cfg)
			} else {
				w.agent = testutil.StartSPIREAgent(t, cfg)
			}
			e, err := adminclient.NewEntry(w.id, node, uidSelector)
			if err != nil {
				t.Fatal(err)
			}
			e.FederatesWith = []string{r.federate.Name()}
			r.srv.Admin(t).CreateEntries(t, e)
			w.src = testutil.NewX509Source(t, w.agent.SocketAddr(), testutil.PickID(w.id))
			*r.side = append(*r.side, w)
		}
	}
	expectFederatedWorkloads(t, sigilSide, spireSide)
	return &spireFederation{sigil: sigil, spire: spire, sigilSide: sigilSide, spireSide: spireSide}
}

// TestFederationWithSPIRE: federateWithSPIRE, then spire-server rotates its
// X.509 CA (localauthority prepare, activate, taint, revoke once every
// agent moved off it): sigil-server follows through its https_spiffe
// refresher with no step on the Sigil side, and its workloads get the new
// root, then lose the old one; workloads of both domains still complete
// mTLS and validate each other's JWT-SVIDs.
func TestFederationWithSPIRE(t *testing.T) {
	f := federateWithSPIRE(t, testutil.ServerConfig{}, false)
	sigil, spire, sigilSide, spireSide := f.sigil, f.spire, f.sigilSide, f.spireSide
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()

	// spire-server rotates its X.509 CA.
	la := localauthorityv1.NewLocalAuthorityClient(spire.Admin(t).Conn)
	before := spire.Admin(t).BundleCerts(t)
	if len(before) != 1 {
		t.Fatalf("spire-server publishes %d X.509 authorities at start, want 1", len(before))
	}
	old, err := la.GetX509AuthorityState(ctx, &localauthorityv1.GetX509AuthorityStateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	prepared, err := la.PrepareX509Authority(ctx, &localauthorityv1.PrepareX509AuthorityRequest{})
	if err != nil {
		t.Fatalf("spire-server localauthority x509 prepare: %v", err)
	}
	var next *x509.Certificate
	for _, c := range spire.Admin(t).BundleCerts(t) {
		if !c.Equal(before[0]) {
			next = c
		}
	}
	if next == nil {
		t.Fatal("spire-server publishes no new X.509 authority after prepare")
	}
	waitSigilWorkloads(t, sigilSide, spireTD, "the prepared spire-server CA", func(roots []*x509.Certificate) bool { return containsCert(roots, next) })
	if _, err := la.ActivateX509Authority(ctx, &localauthorityv1.ActivateX509AuthorityRequest{AuthorityId: prepared.GetPreparedAuthority().GetAuthorityId()}); err != nil {
		t.Fatalf("spire-server localauthority x509 activate: %v", err)
	}
	oldID := old.GetActive().GetAuthorityId()
	if _, err := la.TaintX509Authority(ctx, &localauthorityv1.TaintX509AuthorityRequest{AuthorityId: oldID}); err != nil {
		t.Fatalf("spire-server localauthority x509 taint: %v", err)
	}
	// As SPIRE's rotation procedure says, the old authority is revoked
	// once every agent rotated its workloads' SVIDs off the tainted one:
	// a spire-agent and a sigil-agent alike.
	onlyNext := x509bundle.FromX509Authorities(spireTD, []*x509.Certificate{next})
	for _, w := range spireSide {
		var last error
		if err := testutil.Poll(deadline, 100*time.Millisecond, func() (bool, error) {
			var svid *x509svid.SVID
			if svid, last = w.src.GetX509SVID(); last == nil {
				_, _, last = x509svid.Verify(svid.Certificates, onlyNext)
			}
			return last == nil, nil
		}); err != nil {
			t.Fatalf("the %s workload's SVID after spire-server tainted its old CA: not signed by the new one: %v (last: %v)", w.name, err, last)
		}
	}
	if _, err := la.RevokeX509Authority(ctx, &localauthorityv1.RevokeX509AuthorityRequest{AuthorityId: oldID}); err != nil {
		t.Fatalf("spire-server localauthority x509 revoke: %v", err)
	}
	waitSigilWorkloads(t, sigilSide, spireTD, "the revoked spire-server CA gone", func(roots []*x509.Certificate) bool {
		return containsCert(roots, next) && !containsCert(roots, before[0])
	})
	st := sigil.Admin(t).WaitFederationRefreshed(t, spireTD.Name(), time.Now(), deadline)
	t.Logf("sigil-server follows spire-server's rotated CA: last refresh %s, %d consecutive failures", st.LastSuccess.Format(time.RFC3339), st.ConsecutiveFailures)
	expectFederatedWorkloads(t, sigilSide, spireSide)

	// spire-server rotates its JWT key and taints the old one: both of its
	// agents stop serving their cached JWT-SVIDs signed with it (a fresh
	// one for the same audience has the new key), long before those reach
	// half their lifetime.
	cached := map[*fedWorkload]string{}
	for _, w := range spireSide {
		cached[w] = jwtKeyID(t, w, "taint-check")
	}
	oldJWT, err := la.GetJWTAuthorityState(ctx, &localauthorityv1.GetJWTAuthorityStateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	preparedJWT, err := la.PrepareJWTAuthority(ctx, &localauthorityv1.PrepareJWTAuthorityRequest{})
	if err != nil {
		t.Fatalf("spire-server localauthority jwt prepare: %v", err)
	}
	if _, err := la.ActivateJWTAuthority(ctx, &localauthorityv1.ActivateJWTAuthorityRequest{AuthorityId: preparedJWT.GetPreparedAuthority().GetAuthorityId()}); err != nil {
		t.Fatalf("spire-server localauthority jwt activate: %v", err)
	}
	if _, err := la.TaintJWTAuthority(ctx, &localauthorityv1.TaintJWTAuthorityRequest{AuthorityId: oldJWT.GetActive().GetAuthorityId()}); err != nil {
		t.Fatalf("spire-server localauthority jwt taint: %v", err)
	}
	for _, w := range spireSide {
		var kid string
		if err := testutil.Poll(deadline, 200*time.Millisecond, func() (bool, error) {
			kid = jwtKeyID(t, w, "taint-check")
			return kid != cached[w], nil
		}); err != nil {
			t.Fatalf("the %s still serves a JWT-SVID signed with the tainted key %q: %v", w.name, kid, err)
		}
	}
	expectFederatedWorkloads(t, sigilSide, spireSide)
}

// jwtKeyID is the key ID of the JWT-SVID w's agent serves w for audience.
func jwtKeyID(t *testing.T, w *fedWorkload, audience string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	svid, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience, Subject: w.id}, workloadapi.WithAddr(w.agent.SocketAddr()))
	if err != nil {
		t.Fatalf("JWT-SVID of the %s workload: %v", w.name, err)
	}
	tok, err := jose.ParseSignedCompact(svid.Marshal(), []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.RS256})
	if err != nil {
		t.Fatal(err)
	}
	return tok.Signatures[0].Header.KeyID
}

// TestSPIREFollowsSigilCARotation: federateWithSPIRE with a sigil-server
// whose CA lives a minute, so it rotates during the test (next CA
// published, then activated: SVIDs, the bundle endpoint's SVID and JWT
// keys move to it): spire-server follows through its https_spiffe
// refresher with no step on the SPIRE side, and the workloads of its
// agents get the new root before the sigil-side workloads present SVIDs
// of the new CA; mTLS and JWT-SVIDs across keep working.
func TestSPIREFollowsSigilCARotation(t *testing.T) {
	f := federateWithSPIRE(t, testutil.ServerConfig{CATTL: time.Minute, X509SVIDTTL: 10 * time.Second}, true)
	first := f.sigil.Admin(t).BundleCerts(t)
	if len(first) != 1 {
		t.Fatalf("sigil-server publishes %d X.509 authorities at start, want 1", len(first))
	}
	var next *x509.Certificate
	if err := testutil.Poll(2*time.Minute, 100*time.Millisecond, func() (bool, error) {
		for _, c := range f.sigil.Admin(t).BundleCerts(t) {
			if !c.Equal(first[0]) {
				next = c
			}
		}
		return next != nil, nil
	}); err != nil {
		t.Fatalf("sigil-server's CA did not rotate: %v", err)
	}
	waitSigilWorkloads(t, f.spireSide, sigilTD, "sigil-server's next CA", func(roots []*x509.Certificate) bool { return containsCert(roots, next) })
	onlyNext := x509bundle.FromX509Authorities(sigilTD, []*x509.Certificate{next})
	for _, w := range f.sigilSide {
		var last error
		if err := testutil.Poll(2*time.Minute, 100*time.Millisecond, func() (bool, error) {
			var svid *x509svid.SVID
			if svid, last = w.src.GetX509SVID(); last == nil {
				_, _, last = x509svid.Verify(svid.Certificates, onlyNext)
			}
			return last == nil, nil
		}); err != nil {
			t.Fatalf("the %s workload never got an SVID of sigil-server's next CA: %v (last: %v)", w.name, err, last)
		}
	}
	// Once sigil-server's bundle endpoint presents an SVID of the new CA,
	// spire-server still authenticates it (RefreshBundle, as
	// `spire-server federation refresh`, fails when the fetch does).
	var last error
	if err := testutil.Poll(2*time.Minute, 200*time.Millisecond, func() (bool, error) {
		last = endpointSignedBy(f.sigil.Config.BundleEndpoint.URL(), onlyNext)
		return last == nil, nil
	}); err != nil {
		t.Fatalf("sigil-server's bundle endpoint never presented an SVID of its next CA: %v (last: %v)", err, last)
	}
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	if _, err := f.spire.Admin(t).TrustDomainClient().RefreshBundle(ctx, &trustdomainv1.RefreshBundleRequest{TrustDomain: sigilTD.Name()}); err != nil {
		t.Fatalf("spire-server refreshing %s's bundle from the endpoint's new SVID: %v", sigilTD, err)
	}
	expectFederatedWorkloads(t, f.sigilSide, f.spireSide)
}

// endpointSignedBy checks that the https_spiffe bundle endpoint at url
// presents an SVID that verifies against b.
func endpointSignedBy(url string, b *x509bundle.Bundle) error {
	host := strings.TrimPrefix(url, "https://")
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: deadline}, "tcp", host, &tls.Config{InsecureSkipVerify: true}) // #nosec G402 -- verified below against b
	if err != nil {
		return err
	}
	defer conn.Close()
	_, _, err = x509svid.Verify(conn.ConnectionState().PeerCertificates, b)
	return err
}

// fedWorkload is a go-spiffe workload behind an agent of either kind.
type fedWorkload struct {
	name  string
	td    spiffeid.TrustDomain
	id    spiffeid.ID
	agent *testutil.Agent
	src   *workloadapi.X509Source
}

// expectFederatedWorkloads: every workload of one side completes mTLS with
// every workload of the other, both ways, each authorizing the other by
// trust domain, and a JWT-SVID of each validates through the other's
// agent (ValidateJWTSVID for an entry federating with its domain).
func expectFederatedWorkloads(t *testing.T, as, bs []*fedWorkload) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	aud := "interop-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	for _, a := range as {
		for _, b := range bs {
			var last error
			if err := testutil.Poll(deadline, 100*time.Millisecond, func() (bool, error) {
				last = workloadMTLS(a.src, b.src, a.td, b.td)
				if last == nil {
					last = workloadMTLS(b.src, a.src, b.td, a.td)
				}
				return last == nil, nil
			}); err != nil {
				t.Fatalf("mTLS between the %s workload and the %s workload: %v (last: %v)", a.name, b.name, err, last)
			}
			for _, p := range [][2]*fedWorkload{{a, b}, {b, a}} {
				from, to := p[0], p[1]
				token, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud, Subject: from.id}, workloadapi.WithAddr(from.agent.SocketAddr()))
				if err != nil {
					t.Fatalf("JWT-SVID of the %s workload: %v", from.name, err)
				}
				var got *jwtsvid.SVID
				if err := testutil.Poll(deadline, 100*time.Millisecond, func() (bool, error) {
					got, last = workloadapi.ValidateJWTSVID(ctx, token.Marshal(), aud, workloadapi.WithAddr(to.agent.SocketAddr()))
					return last == nil, nil
				}); err != nil {
					t.Fatalf("the %s validating a JWT-SVID of the %s workload: %v (last: %v)", to.name, from.name, err, last)
				}
				if got.ID != from.id {
					t.Fatalf("the %s validated %s, want %s", to.name, got.ID, from.id)
				}
			}
		}
	}
}

// waitSigilWorkloads waits until every workload's X.509 bundle of td
// satisfies ok.
func waitSigilWorkloads(t *testing.T, ws []*fedWorkload, td spiffeid.TrustDomain, what string, ok func([]*x509.Certificate) bool) {
	t.Helper()
	for _, w := range ws {
		if err := testutil.Poll(deadline, 100*time.Millisecond, func() (bool, error) {
			b, err := w.src.GetX509BundleForTrustDomain(td)
			return err == nil && ok(b.X509Authorities()), nil
		}); err != nil {
			t.Fatalf("the %s workload's bundle of %s: %s: %v", w.name, td, what, err)
		}
	}
}

func containsCert(cs []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range cs {
		if x.Equal(c) {
			return true
		}
	}
	return false
}

// sameAuthorities reports whether two bundles hold the same X.509
// authorities.
func sameAuthorities(a, b *types.Bundle) bool {
	if len(a.X509Authorities) != len(b.X509Authorities) {
		return false
	}
	want := map[string]bool{}
	for _, x := range a.X509Authorities {
		want[string(x.Asn1)] = true
	}
	for _, x := range b.X509Authorities {
		if !want[string(x.Asn1)] {
			return false
		}
	}
	return true
}

// workloadMTLS is a go-spiffe mTLS exchange between two workloads, each
// authorizing the other by trust domain.
func workloadMTLS(server, client *workloadapi.X509Source, serverTD, clientTD spiffeid.TrustDomain) error {
	return testutil.MTLSExchange(
		tlsconfig.MTLSServerConfig(server, server, tlsconfig.AuthorizeMemberOf(clientTD)),
		tlsconfig.MTLSClientConfig(client, client, tlsconfig.AuthorizeMemberOf(serverTD)), deadline)
}

// TestFederationWithSPIREOverWebPKI: a sigil-server and a spire-server
// federate both ways with profile https_web: each bundle endpoint serves a
// certificate of a test Web PKI (serving_cert_file), which the other
// server trusts as its system roots (SSL_CERT_FILE), with no bootstrap
// bundle. Each then holds the other's whole bundle, as its endpoint
// serves it.
func TestFederationWithSPIREOverWebPKI(t *testing.T) {
	testutil.SPIREBinaries(t)
	webRoot := testca.New(t, testca.Subject("Sigil interop Web PKI root"))
	dir := testutil.ShortTempDir(t)
	cert, key := webRoot.Leaf(t, testca.DNSNames("localhost"), testca.ExtKeyUsage(x509.ExtKeyUsageServerAuth),
		testca.Template(func(c *x509.Certificate) { c.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)} }))
	certFile, keyFile := testca.WriteCertsPEM(t, filepath.Join(dir, "web.crt"), cert), testca.WriteKeyPEM(t, filepath.Join(dir, "web.key"), key)
	roots := "SSL_CERT_FILE=" + testca.WriteCertsPEM(t, filepath.Join(dir, "roots.pem"), webRoot.Cert)
	endpoint := func() *testutil.BundleEndpoint {
		port, err := testutil.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		return &testutil.BundleEndpoint{Port: port, RefreshHint: 5 * time.Second, CertFile: certFile, KeyFile: keyFile}
	}
	sigilEP, spireEP := endpoint(), endpoint()
	sigil := testutil.NewServer(t, testutil.ServerConfig{TrustDomain: sigilTD.Name(), BundleEndpoint: sigilEP,
		FederatesWith: []testutil.FederatesWith{{TrustDomain: spireTD.Name(), URL: spireEP.URL()}}})
	sigil.Env = []string{roots}
	sigil.Start(t)
	spire := testutil.NewSPIREServer(t, testutil.ServerConfig{TrustDomain: spireTD.Name(), BundleEndpoint: spireEP,
		FederatesWith: []testutil.FederatesWith{{TrustDomain: sigilTD.Name(), URL: sigilEP.URL()}}})
	spire.Env = []string{roots}
	spire.Start(t)

	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	for _, p := range []struct{ holder, owner *testutil.Server }{{sigil, spire}, {spire, sigil}} {
		var own, fb *types.Bundle
		if err := testutil.Poll(deadline, 200*time.Millisecond, func() (bool, error) {
			var err error
			if own, err = p.owner.Admin(t).Bundle.GetBundle(ctx, &bundlev1.GetBundleRequest{}); err != nil {
				return false, err
			}
			fb, err = p.holder.Admin(t).Bundle.GetFederatedBundle(ctx, &bundlev1.GetFederatedBundleRequest{TrustDomain: p.owner.Config.TrustDomain})
			return err == nil && sameAuthorities(own, fb) && len(fb.JwtAuthorities) == len(own.JwtAuthorities) && fb.RefreshHint == 5, nil
		}); err != nil {
			t.Fatalf("%s never held %s's bundle over https_web: %v (has %v)\n%s", p.holder.Name(), p.owner.Name(), err, fb, p.holder.Proc.Logs())
		}
	}
	sigil.Admin(t).WaitFederationRefreshed(t, spireTD.Name(), time.Time{}, deadline)
}
