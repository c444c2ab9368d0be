// Package sds runs a real sigil-server and sigil-agent and speaks Envoy's
// SDS to the agent's socket with go-control-plane's generated client, as
// Envoy does: the first fetch, ACK and NACK, pushes on rotation and bundle
// change, federated bundles in the validation contexts, unknown names, a
// caller without entries, and malformed requests that must not take the
// agent down.
package sds

import (
	"context"
	"crypto"
	"crypto/x509"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/adminclient"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

func TestMain(m *testing.M) { os.Exit(testutil.Main(m)) }

// deadline bounds waits for things that normally take milliseconds.
const deadline = 30 * time.Second

var (
	edgeTD      = spiffeid.RequireTrustDomainFromString("edge.test")
	uidSelector = "unix:uid:" + strconv.Itoa(os.Getuid())
	envoy       = testutil.EnvoyNode(1, 34)
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	t.Cleanup(cancel)
	return ctx
}

// edgeBundle is edge.test's bundle of the given CAs.
func edgeBundle(cas []*testca.CA) *spiffebundle.Bundle {
	b := spiffebundle.New(edgeTD)
	for _, ca := range cas {
		b.AddX509Authority(ca.Cert)
	}
	b.SetSequenceNumber(uint64(len(cas)))
	return b
}

func TestEnvoySDS(t *testing.T) {
	srv := testutil.StartServer(t, testutil.ServerConfig{})
	adm := srv.Admin(t)
	edge := []*testca.CA{testca.New(t, testca.TrustDomain(edgeTD), testca.Subject("edge CA 1"))}
	adm.SetFederatedBundle(t, edgeBundle(edge))
	a := testutil.StartAgent(t, testutil.AgentFor(t, srv, "/agent/envoy", ""))
	client := testutil.DialSDS(t, a.SocketAddr())
	td := srv.TrustDomain()
	ours := func() []*x509.Certificate { return adm.BundleCerts(t) }

	// A caller without entries gets our trust domain's validation
	// contexts, and no certificate, once the agent has attested (before,
	// it has no trust bundle: Unavailable).
	var resp *discoveryv3.DiscoveryResponse
	err := testutil.Poll(deadline, 20*time.Millisecond, func() (bool, error) {
		var err error
		resp, err = client.FetchSecrets(ctxT(t), testutil.SDSRequest(envoy, "ROOTCA", td.IDString()))
		if status.Code(err) == codes.Unavailable {
			return false, nil
		}
		return true, err
	})
	if err != nil {
		t.Fatalf("FetchSecrets without entries: %v", err)
	}
	for _, s := range testutil.DecodeSecrets(t, resp) {
		if s.Kind != "spiffe_validator" || !slices.Equal(s.TrustDomainsOrder, []string{td.Name()}) || !sameCerts(s.TrustDomains[td.Name()], ours()) {
			t.Fatalf("%s without entries: %s %q", s.Name, s.Kind, s.TrustDomainsOrder)
		}
	}
	if _, err := client.FetchSecrets(ctxT(t), testutil.SDSRequest(envoy, "default")); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("default without entries: %v, want InvalidArgument", err)
	}

	webID := srv.ID("/web")
	e, err := adminclient.NewEntry(webID, srv.ID("/agent/envoy"), uidSelector)
	if err != nil {
		t.Fatal(err)
	}
	e.FederatesWith = []string{edgeTD.Name()}
	entryID := adm.CreateEntries(t, e)[0]
	testutil.RequireSVID(t, a.SocketAddr(), webID, deadline)

	// The first response: version 1, a nonce, the SVID under its ID and
	// under "default", our bundle as ROOTCA, ours and edge.test's in ALL
	// and edge.test's under its trust domain ID.
	names := []string{webID.String(), "default", "ROOTCA", "ALL", edgeTD.IDString()}
	st, err := client.StreamSecrets(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	send(t, st, testutil.SDSRequest(envoy, names...))
	r1 := recv(t, st)
	if r1.VersionInfo != "1" || r1.Nonce == "" {
		t.Fatalf("first response: version %q nonce %q", r1.VersionInfo, r1.Nonce)
	}
	ss := testutil.DecodeSecrets(t, r1)
	if got, want := testutil.SecretNames(ss), sorted(names); !slices.Equal(got, want) {
		t.Fatalf("secrets %q, want %q", got, want)
	}
	svid1 := checkSVID(t, testutil.SecretNamed(t, ss, webID.String()), webID, td, ours())
	if d := testutil.SecretNamed(t, ss, "default"); !d.Certs[0].Equal(svid1) {
		t.Fatal("default is not the workload's SVID")
	}
	checkContext(t, testutil.SecretNamed(t, ss, "ROOTCA"), map[string][]*x509.Certificate{td.Name(): ours()})
	checkContext(t, testutil.SecretNamed(t, ss, "ALL"), map[string][]*x509.Certificate{td.Name(): ours(), edgeTD.Name(): certsOf(edge)})
	checkContext(t, testutil.SecretNamed(t, ss, edgeTD.IDString()), map[string][]*x509.Certificate{edgeTD.Name(): certsOf(edge)})

	// ACK. Then a rotation (the entry changes, the agent gets a new SVID)
	// is pushed as version 2: the ACK itself was not answered.
	send(t, st, testutil.SDSAck(r1, names...))
	updateDNSNames(t, adm, entryID, "web.example")
	r2 := recv(t, st)
	svid2 := checkSVID(t, testutil.SecretNamed(t, testutil.DecodeSecrets(t, r2), webID.String()), webID, td, ours())
	if r2.VersionInfo != "2" || svid2.Equal(svid1) || !slices.Equal(svid2.DNSNames, []string{"web.example"}) {
		t.Fatalf("rotation push: version %q, new certificate %v, DNS names %q", r2.VersionInfo, !svid2.Equal(svid1), svid2.DNSNames)
	}

	// NACK of version 2 (Envoy keeps version 1): not answered, no loop.
	// The next change, edge.test's bundle rotating, is pushed as
	// version 3, carrying the new edge.test CA in ALL and under its ID.
	nack := testutil.SDSAck(r2, names...)
	nack.VersionInfo = "1"
	nack.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "Failed to load certificate chain"}
	send(t, st, nack)
	edge = append(edge, testca.New(t, testca.TrustDomain(edgeTD), testca.Subject("edge CA 2")))
	adm.SetFederatedBundle(t, edgeBundle(edge))
	r3 := recv(t, st)
	if r3.VersionInfo != "3" {
		t.Fatalf("after the NACK and a bundle change: version %q, want 3", r3.VersionInfo)
	}
	ss = testutil.DecodeSecrets(t, r3)
	checkContext(t, testutil.SecretNamed(t, ss, "ALL"), map[string][]*x509.Certificate{td.Name(): ours(), edgeTD.Name(): certsOf(edge)})
	checkContext(t, testutil.SecretNamed(t, ss, edgeTD.IDString()), map[string][]*x509.Certificate{edgeTD.Name(): certsOf(edge)})
	if got := testutil.SecretNamed(t, ss, webID.String()).Certs[0]; !got.Equal(svid2) {
		t.Fatal("the bundle push changed the SVID")
	}
	a.Proc.WaitForLog(t, "NACK", deadline)

	// Unknown names end the stream with InvalidArgument, as in SPIRE.
	st2, err := client.StreamSecrets(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	send(t, st2, testutil.SDSRequest(envoy, webID.String(), srv.ID("/not-mine").String()))
	if _, err := st2.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("an unknown name: %v, want InvalidArgument", err)
	}

	// Malformed requests get InvalidArgument, and the agent keeps
	// serving (spire-agent 1.15.3 exits on the first).
	versionless := &corev3.Node{Id: "envoy", UserAgentName: "envoy",
		UserAgentVersionType: &corev3.Node_UserAgentBuildVersion{UserAgentBuildVersion: &corev3.BuildVersion{}}}
	huge := make([]string, 100_000)
	for i := range huge {
		huge[i] = "ROOTCA"
	}
	for _, req := range []*discoveryv3.DiscoveryRequest{
		testutil.SDSRequest(versionless, "ROOTCA"),
		testutil.SDSRequest(envoy),
		testutil.SDSRequest(envoy, huge...),
	} {
		if _, err := client.FetchSecrets(ctxT(t), req); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("FetchSecrets of a malformed request: %v, want InvalidArgument", err)
		}
		s, err := client.StreamSecrets(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		send(t, s, req)
		if _, err := s.Recv(); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("StreamSecrets of a malformed request: %v, want InvalidArgument", err)
		}
	}
	if a.Proc.Exited() {
		t.Fatalf("the agent exited:\n%s", a.Proc.Logs())
	}
	// The first stream still serves: a new name is answered.
	send(t, st, testutil.SDSAck(r3, append(names, "spiffe://"+td.Name())...))
	if r4 := recv(t, st); r4.VersionInfo != "4" || len(r4.Resources) != len(names)+1 {
		t.Fatalf("after the malformed requests: version %q, %d secrets", r4.VersionInfo, len(r4.Resources))
	}
}

func send(t *testing.T, st grpc.BidiStreamingClient[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse], req *discoveryv3.DiscoveryRequest) {
	t.Helper()
	if err := st.Send(req); err != nil {
		t.Fatalf("send: %v", err)
	}
}

func recv(t *testing.T, st grpc.BidiStreamingClient[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) *discoveryv3.DiscoveryResponse {
	t.Helper()
	resp, err := st.Recv()
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	return resp
}

// checkSVID checks a TLS certificate secret is an X509-SVID for id that
// verifies against our bundle, with its key, and returns the leaf.
func checkSVID(t *testing.T, s testutil.Secret, id spiffeid.ID, td spiffeid.TrustDomain, bundle []*x509.Certificate) *x509.Certificate {
	t.Helper()
	if s.Kind != "tls_certificate" {
		t.Fatalf("%s is a %s", s.Name, s.Kind)
	}
	got, _, err := x509svid.Verify(s.Certs, x509bundle.FromX509Authorities(td, bundle))
	if err != nil || got != id {
		t.Fatalf("%s: %s, %v", s.Name, got, err)
	}
	pub, ok := s.Key.(crypto.Signer)
	if !ok || !s.Certs[0].PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(pub.Public()) {
		t.Fatalf("%s: the key is not the certificate's", s.Name)
	}
	return s.Certs[0]
}

// checkContext checks a SPIFFE validator context holds exactly want.
func checkContext(t *testing.T, s testutil.Secret, want map[string][]*x509.Certificate) {
	t.Helper()
	if s.Kind != "spiffe_validator" || len(s.TrustDomains) != len(want) {
		t.Fatalf("%s: %s with %q", s.Name, s.Kind, s.TrustDomainsOrder)
	}
	for td, certs := range want {
		if !sameCerts(s.TrustDomains[td], certs) {
			t.Fatalf("%s: the authorities of %s are not the expected %d", s.Name, td, len(certs))
		}
	}
}

func sameCerts(a, b []*x509.Certificate) bool {
	return slices.EqualFunc(a, b, func(x, y *x509.Certificate) bool { return x.Equal(y) })
}

func certsOf(cas []*testca.CA) []*x509.Certificate {
	var out []*x509.Certificate
	for _, ca := range cas {
		out = append(out, ca.Cert)
	}
	return out
}

func sorted(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

// updateDNSNames sets an entry's DNS names, a change that makes the agent
// get its workload a new SVID.
func updateDNSNames(t *testing.T, adm *testutil.Admin, id string, dns ...string) {
	t.Helper()
	u := &types.Entry{Id: id, DnsNames: dns}
	resp, err := adm.Entry.BatchUpdateEntry(ctxT(t), &entryv1.BatchUpdateEntryRequest{Entries: []*types.Entry{u}, InputMask: &types.EntryMask{DnsNames: true}})
	if err != nil {
		t.Fatal(err)
	}
	if c := resp.GetResults()[0].GetStatus().GetCode(); c != 0 {
		t.Fatalf("update entry: %v", resp.GetResults()[0].GetStatus())
	}
}
