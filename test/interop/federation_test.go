package interop

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	trustdomainv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/trustdomain/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/internal/adminclient"
	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// TestFederationWithSPIRE: a sigil-server (cloud.test) and a spire-server
// (edge.test) federate with each other through their bundle endpoints
// (https_spiffe, each authenticated by its server's SVID
// spiffe://<td>/spire/server), from the same kind of configuration, each
// bootstrapped with the other's X.509 authorities only: each then holds
// the other's whole bundle (JWT keys and refresh hint, from the endpoint).
// A workload of each, behind a sigil-agent and a spire-agent, completes
// go-spiffe mTLS with the other's, authorizing it by trust domain.
func TestFederationWithSPIRE(t *testing.T) {
	testutil.SPIREBinaries(t)
	sigilPort, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	spirePort, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	sigilTD, spireTD := spiffeid.RequireTrustDomainFromString("cloud.test"), spiffeid.RequireTrustDomainFromString("edge.test")
	sigilEP := &testutil.BundleEndpoint{Port: sigilPort, RefreshHint: 5 * time.Second}
	spireEP := &testutil.BundleEndpoint{Port: spirePort, RefreshHint: time.Minute}
	sigil := testutil.StartServer(t, testutil.ServerConfig{TrustDomain: sigilTD.Name(), BundleEndpoint: sigilEP,
		FederatesWith: []testutil.FederatesWith{{TrustDomain: spireTD.Name(), URL: spireEP.URL(), EndpointSPIFFEID: "spiffe://edge.test/spire/server"}}})
	spire := testutil.StartSPIREServer(t, testutil.ServerConfig{TrustDomain: spireTD.Name(), BundleEndpoint: spireEP,
		FederatesWith: []testutil.FederatesWith{{TrustDomain: sigilTD.Name(), URL: sigilEP.URL(), EndpointSPIFFEID: "spiffe://cloud.test/spire/server"}}})

	// Bootstrap: each gets the other's X.509 authorities (bundle set).
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	for _, p := range []struct{ to, from *testutil.Server }{{sigil, spire}, {spire, sigil}} {
		b, err := p.from.Admin(t).SPIFFEBundle(ctx)
		if err != nil {
			t.Fatal(err)
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
	}{{sigil, spire, 60}, {spire, sigil, 5}} {
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

	// A workload in each trust domain, federating with the other.
	sigilAgent := testutil.StartAgent(t, testutil.AgentFor(t, sigil, "/node", ""))
	spireAgent := testutil.StartSPIREAgent(t, testutil.AgentFor(t, spire, "/node", ""))
	sigilApp, spireApp := sigil.ID("/app"), spire.ID("/app")
	for _, r := range []struct {
		srv      *testutil.Server
		app      spiffeid.ID
		federate spiffeid.TrustDomain
	}{{sigil, sigilApp, spireTD}, {spire, spireApp, sigilTD}} {
		e, err := adminclient.NewEntry(r.app, r.srv.ID("/node"), uidSelector)
		if err != nil {
			t.Fatal(err)
		}
		e.FederatesWith = []string{r.federate.Name()}
		r.srv.Admin(t).CreateEntries(t, e)
	}
	sigilSrc := testutil.NewX509Source(t, sigilAgent.SocketAddr(), testutil.PickID(sigilApp))
	spireSrc := testutil.NewX509Source(t, spireAgent.SocketAddr(), testutil.PickID(spireApp))
	var last error
	if err := testutil.Poll(deadline, 100*time.Millisecond, func() (bool, error) {
		last = workloadMTLS(sigilSrc, spireSrc, sigilTD, spireTD)
		if last == nil {
			last = workloadMTLS(spireSrc, sigilSrc, spireTD, sigilTD)
		}
		return last == nil, nil
	}); err != nil {
		t.Fatalf("mTLS between a sigil-agent workload of %s and a spire-agent workload of %s: %v (last: %v)", sigilTD, spireTD, err, last)
	}
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
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(server, server, tlsconfig.AuthorizeMemberOf(clientTD)))
	if err != nil {
		return err
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(deadline))
		if err := c.(*tls.Conn).Handshake(); err != nil {
			done <- err
			return
		}
		_, err = io.WriteString(c, "hello")
		done <- err
	}()
	d := net.Dialer{Timeout: deadline}
	conn, err := tls.DialWithDialer(&d, "tcp", ln.Addr().String(), tlsconfig.MTLSClientConfig(client, client, tlsconfig.AuthorizeMemberOf(serverTD)))
	if err != nil {
		_ = ln.Close()
		<-done
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(deadline))
	got, rerr := io.ReadAll(conn)
	if err := <-done; err != nil {
		return err
	}
	if rerr != nil {
		return rerr
	}
	if string(got) != "hello" {
		return io.ErrUnexpectedEOF
	}
	return nil
}
