package sds_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/agent/sds"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/testutil"
)

var modern = envoyNode(1, 30, nil)

// requestsSeen waits until the agent has received n SDS requests in all
// (its debug log says so): a test that must know a request was processed
// before it changes the cache waits for it.
func (e *env) requestsSeen(t *testing.T, n int) {
	t.Helper()
	if err := testutil.Poll(waitLimit, 5*time.Millisecond, func() (bool, error) {
		return strings.Count(e.logs.String(), `"Received SDS request"`) >= n, nil
	}); err != nil {
		t.Fatalf("the agent did not receive %d SDS requests: %v", n, err)
	}
}

// TestStreamVersionsAcksNacksAndPushes walks one stream through the xDS
// exchange: the first response (version 1, a nonce, the TLS certificate
// and our trust domain's SPIFFE validator context in request order); an
// ACK is not answered and a rotation pushes version 2; a NACK is not
// answered either (no loop), and the next rotation pushes version 3; a
// request with a stale nonce is ignored even though it changes the names,
// the same request with the current nonce is answered; a stream that only
// asks for the bundle gets no push for an SVID rotation and one for a CA
// rotation.
func TestStreamVersionsAcksNacksAndPushes(t *testing.T) {
	e := startEnv(t, envOpts{})
	web := entry("web", "/web", e.clk.Now())
	e.setEntries(t, web)
	sv := e.issue(t, web)["web"]

	s := e.open(t)
	want := []string{"spiffe://example.org/web", "ROOTCA"}
	s.send(request(modern, want...))
	r1 := s.recv()
	if r1.VersionInfo != "1" || r1.Nonce == "" || r1.TypeUrl != sds.SecretTypeURL {
		t.Fatalf("first response: version %q nonce %q type %q", r1.VersionInfo, r1.Nonce, r1.TypeUrl)
	}
	ss := secrets(t, r1)
	if !slices.Equal(names(ss), want) {
		t.Fatalf("secrets %q, want %q", names(ss), want)
	}
	checkTLS(t, ss[0], want[0], sv)
	order, tds := spiffeTDs(t, ss[1], "ROOTCA")
	if !slices.Equal(order, []string{"example.org"}) || !sameCerts(tds["example.org"], e.cas[td]) {
		t.Fatalf("ROOTCA: trust domains %q", order)
	}

	// ACK: no answer; the next response is the rotation's.
	s.send(ack(r1, want, "", ""))
	e.requestsSeen(t, 2)
	sv = e.issue(t, web)["web"]
	r2 := s.recv()
	if r2.VersionInfo != "2" || r2.Nonce == r1.Nonce {
		t.Fatalf("after the ACK and a rotation: version %q nonce %q (first nonce %q)", r2.VersionInfo, r2.Nonce, r1.Nonce)
	}
	checkTLS(t, secrets(t, r2)[0], want[0], sv)

	// NACK of version 2 (Envoy keeps version 1): no answer, logged with
	// Envoy's error; the next rotation pushes version 3.
	s.send(ack(r2, want, "1", "Failed to load certificate chain"))
	e.requestsSeen(t, 3)
	if l := e.logs.String(); !strings.Contains(l, "NACK") || !strings.Contains(l, "Failed to load certificate chain") {
		t.Fatalf("the NACK is not logged:\n%s", l)
	}
	sv = e.issue(t, web)["web"]
	r3 := s.recv()
	if r3.VersionInfo != "3" {
		t.Fatalf("after the NACK and a rotation: version %q, want 3", r3.VersionInfo)
	}
	checkTLS(t, secrets(t, r3)[0], want[0], sv)

	// A stale nonce (r2's) is ignored, names and all; the current one is
	// answered.
	s.send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{"spiffe://example.org"}, TypeUrl: sds.SecretTypeURL, VersionInfo: "2", ResponseNonce: r2.Nonce})
	s.send(ack(r3, []string{"ROOTCA"}, "", ""))
	r4 := s.recv()
	if r4.VersionInfo != "4" || !slices.Equal(names(secrets(t, r4)), []string{"ROOTCA"}) {
		t.Fatalf("after the names changed: version %q secrets %q", r4.VersionInfo, names(secrets(t, r4)))
	}
	if !strings.Contains(e.logs.String(), "Ignoring a stale SDS request") {
		t.Fatal("the stale request was not ignored")
	}

	// Only ROOTCA now: an SVID rotation changes nothing it serves, a CA
	// rotation does.
	s.send(ack(r4, []string{"ROOTCA"}, "", ""))
	e.requestsSeen(t, 6)
	e.issue(t, web)
	e.rotateCA(t, td)
	r5 := s.recv()
	_, tds = spiffeTDs(t, secrets(t, r5)[0], "ROOTCA")
	if r5.VersionInfo != "5" || !sameCerts(tds["example.org"], e.cas[td]) || len(e.cas[td]) != 2 {
		t.Fatalf("after the CA rotation: version %q, %d authorities", r5.VersionInfo, len(tds["example.org"]))
	}
}

// TestFederatedValidationContexts: the all-bundles context carries our
// trust domain and every trust domain the caller's entries federate with
// (not others), each federated trust domain has its own context, and a
// change of a federated bundle is pushed.
func TestFederatedValidationContexts(t *testing.T) {
	e := startEnv(t, envOpts{})
	e.rotateCA(t, otherTD)
	e.rotateCA(t, thirdTD)
	web := entry("web", "/web", e.clk.Now())
	web.FederatesWith = []spiffeid.TrustDomain{otherTD}
	e.setEntries(t, web)
	e.issue(t, web)

	s := e.open(t)
	want := []string{"ALL", "spiffe://other.org", "spiffe://example.org"}
	s.send(request(modern, want...))
	r1 := s.recv()
	ss := secrets(t, r1)
	if !slices.Equal(names(ss), want) {
		t.Fatalf("secrets %q", names(ss))
	}
	order, tds := spiffeTDs(t, ss[0], "ALL")
	if !slices.Equal(order, []string{"example.org", "other.org"}) || !sameCerts(tds["example.org"], e.cas[td]) || !sameCerts(tds["other.org"], e.cas[otherTD]) {
		t.Fatalf("ALL: trust domains %q", order)
	}
	if order, tds := spiffeTDs(t, ss[1], "spiffe://other.org"); !slices.Equal(order, []string{"other.org"}) || !sameCerts(tds["other.org"], e.cas[otherTD]) {
		t.Fatalf("spiffe://other.org: trust domains %q", order)
	}
	if order, _ := spiffeTDs(t, ss[2], "spiffe://example.org"); !slices.Equal(order, []string{"example.org"}) {
		t.Fatalf("spiffe://example.org: trust domains %q", order)
	}

	s.send(ack(r1, want, "", ""))
	e.rotateCA(t, otherTD)
	r2 := s.recv()
	_, tds = spiffeTDs(t, secrets(t, r2)[0], "ALL")
	if r2.VersionInfo != "2" || !sameCerts(tds["other.org"], e.cas[otherTD]) || len(e.cas[otherTD]) != 2 {
		t.Fatalf("after other.org's rotation: version %q, %d other.org authorities", r2.VersionInfo, len(tds["other.org"]))
	}

	// third.org has a bundle, but the caller does not federate with it.
	_, err := e.client.FetchSecrets(ctxT(t), request(modern, "spiffe://third.org"))
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("spiffe://third.org: %v, want InvalidArgument", err)
	}
}

// TestValidationContextKinds: SPIFFE validation is on by default, off with
// the configuration, and the Envoy node's disable_spiffe_cert_validation
// metadata (a bool, or a string that parses as one) overrides either; an
// Envoy of 1.17 or older gets trusted_ca; the all-bundles name cannot be a
// trusted_ca.
func TestValidationContextKinds(t *testing.T) {
	noBuildVersion := &corev3.Node{Id: "x", UserAgentName: "envoy", UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: "1.10.0"}}
	cases := []struct {
		name          string
		disableConfig bool
		node          *corev3.Node
		spiffe        bool
	}{
		{"default", false, modern, true},
		{"no node", false, nil, true},
		{"no build version", false, noBuildVersion, true},
		{"Envoy 1.17", false, envoyNode(1, 17, nil), false},
		{"Envoy 1.18", false, envoyNode(1, 18, nil), true},
		{"Envoy 2.0", false, envoyNode(2, 0, nil), true},
		{"metadata true", false, envoyNode(1, 30, map[string]any{"disable_spiffe_cert_validation": true}), false},
		{"metadata \"true\"", false, envoyNode(1, 30, map[string]any{"disable_spiffe_cert_validation": "true"}), false},
		{"metadata unparsable", false, envoyNode(1, 30, map[string]any{"disable_spiffe_cert_validation": "perhaps"}), true},
		{"config disables", true, modern, false},
		{"metadata false overrides config", true, envoyNode(1, 30, map[string]any{"disable_spiffe_cert_validation": false}), true},
		{"metadata of another type", true, envoyNode(1, 30, map[string]any{"disable_spiffe_cert_validation": 0.0}), false},
	}
	envs := map[bool]*env{}
	for _, disable := range []bool{false, true} {
		e := startEnv(t, envOpts{disableSPIFFE: disable})
		e.rotateCA(t, td)
		envs[disable] = e
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := envs[c.disableConfig]
			resp, err := e.client.FetchSecrets(ctxT(t), request(c.node, "ROOTCA", "spiffe://example.org"))
			if err != nil {
				t.Fatal(err)
			}
			if resp.VersionInfo != "" || resp.Nonce != "" {
				t.Errorf("FetchSecrets: version %q nonce %q, want none", resp.VersionInfo, resp.Nonce)
			}
			ss := secrets(t, resp)
			for i, name := range []string{"ROOTCA", "spiffe://example.org"} {
				if c.spiffe {
					if _, tds := spiffeTDs(t, ss[i], name); !sameCerts(tds["example.org"], e.cas[td]) {
						t.Fatalf("%s: wrong authorities", name)
					}
				} else if !sameCerts(trustedCA(t, ss[i], name), e.cas[td]) {
					t.Fatalf("%s: wrong authorities", name)
				}
			}
			_, err = e.client.FetchSecrets(ctxT(t), request(c.node, "ALL"))
			if c.spiffe && err != nil {
				t.Fatalf("ALL: %v", err)
			}
			if !c.spiffe && status.Code(err) != codes.FailedPrecondition {
				t.Fatalf("ALL as trusted_ca: %v, want FailedPrecondition", err)
			}
		})
	}
}

// TestDefaultSVIDAndUnknownNames: "default" is the caller's default SVID
// (the first in serving order, as go-spiffe's default), under that name; a
// name the caller may not have ends the stream, and fails a fetch, with
// InvalidArgument naming it.
func TestDefaultSVIDAndUnknownNames(t *testing.T) {
	e := startEnv(t, envOpts{})
	now := e.clk.Now()
	older := entry("b", "/b", now.Add(-time.Hour))
	older.Hint = "internal"
	newer := entry("a", "/a", now)
	e.setEntries(t, older, newer)
	svids := e.issue(t, older, newer)

	resp, err := e.client.FetchSecrets(ctxT(t), request(modern, "default", "spiffe://example.org/b"))
	if err != nil {
		t.Fatal(err)
	}
	ss := secrets(t, resp)
	checkTLS(t, ss[0], "default", svids["a"]) // hint-less first
	checkTLS(t, ss[1], "spiffe://example.org/b", svids["b"])

	unknown := []string{"spiffe://example.org/a", "spiffe://example.org/nope", "spiffe://example.org/zzz", "ROOTCA", "spiffe://elsewhere.org"}
	check := func(what string, err error) {
		t.Helper()
		st := status.Convert(err)
		if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), `"spiffe://elsewhere.org"`) || !strings.Contains(st.Message(), "and 1 more") {
			t.Fatalf("%s: %v, want InvalidArgument naming the unknown names", what, err)
		}
		if strings.Contains(st.Message(), `"ROOTCA"`) {
			t.Fatalf("%s: %v names a known secret", what, err)
		}
	}
	_, err = e.client.FetchSecrets(ctxT(t), request(modern, unknown...))
	check("FetchSecrets", err)
	s := e.open(t)
	s.send(request(modern, unknown...))
	_, err = s.s.Recv()
	check("StreamSecrets", err)
}

// TestCallerWithoutEntries: a caller no entry matches gets our trust
// domain's validation contexts (as from SPIRE) but no certificate.
func TestCallerWithoutEntries(t *testing.T) {
	e := startEnv(t, envOpts{})
	other := entry("o", "/other-uid", e.clk.Now(), selector.Selector{Type: "unix", Value: "uid:4242"})
	e.setEntries(t, other)
	e.issue(t, other)

	s := e.open(t)
	s.send(request(modern, "ROOTCA", "spiffe://example.org"))
	if ss := secrets(t, s.recv()); !slices.Equal(names(ss), []string{"ROOTCA", "spiffe://example.org"}) {
		t.Fatalf("secrets %q", names(ss))
	}
	for _, name := range []string{"default", "spiffe://example.org/other-uid", "ALL"} {
		_, err := e.client.FetchSecrets(ctxT(t), request(modern, name))
		if name == "ALL" {
			if err != nil {
				t.Fatalf("ALL: %v", err)
			}
			continue
		}
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("%s: %v, want InvalidArgument", name, err)
		}
	}
}

// TestMalformedRequests: what a local process may send that SPIRE accepts
// or crashes on gets InvalidArgument, on a stream and from FetchSecrets,
// and the agent goes on serving.
func TestMalformedRequests(t *testing.T) {
	e := startEnv(t, envOpts{})
	web := entry("web", "/web", e.clk.Now())
	e.setEntries(t, web)
	e.issue(t, web)

	versionless := &corev3.Node{Id: "envoy", UserAgentName: "envoy",
		UserAgentVersionType: &corev3.Node_UserAgentBuildVersion{UserAgentBuildVersion: &corev3.BuildVersion{}}}
	many := make([]string, sds.MaxResourceNames+1)
	for i := range many {
		many[i] = "ROOTCA"
	}
	cases := []struct {
		name string
		req  *discoveryv3.DiscoveryRequest
		msg  string
	}{
		{"build version without version", request(versionless, "ROOTCA"), "user_agent_build_version has no version"},
		{"no names", request(modern), "resource_names is empty"},
		{"too many names", request(modern, many...), "1025 resource names requested; at most 1024"},
		{"empty name", request(modern, "ROOTCA", ""), "resource name 1 is empty"},
		{"name too long", request(modern, "spiffe://example.org/"+strings.Repeat("x", sds.MaxNameLen)), "resource name 0 is longer than 2048 bytes"},
		{"other type", &discoveryv3.DiscoveryRequest{TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster", ResourceNames: []string{"ROOTCA"}}, "is not " + sds.SecretTypeURL},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			check := func(what string, err error) {
				t.Helper()
				if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), c.msg) {
					t.Fatalf("%s: %v, want InvalidArgument %q", what, err, c.msg)
				}
			}
			_, err := e.client.FetchSecrets(ctxT(t), c.req)
			check("FetchSecrets", err)
			s := e.open(t)
			s.send(c.req)
			_, err = s.s.Recv()
			check("StreamSecrets", err)
		})
	}
	// After a valid first request, a versionless node is refused too.
	s := e.open(t)
	s.send(request(modern, "ROOTCA"))
	r := s.recv()
	req := ack(r, []string{"ROOTCA"}, "", "")
	req.Node = versionless
	s.send(req)
	if _, err := s.s.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("versionless node on an open stream: %v", err)
	}
	if _, err := e.client.FetchSecrets(ctxT(t), request(modern, "default")); err != nil {
		t.Fatalf("after the malformed requests: %v", err)
	}
}

// TestFirstResponseWaitsForSVIDs: a stream's first response waits until
// the caller's entries have SVIDs and the bundles of the trust domains
// they federate with, then serves them; when they do not come within the
// wait, it serves what there is.
func TestFirstResponseWaitsForSVIDs(t *testing.T) {
	e := startEnv(t, envOpts{})
	web := entry("web", "/web", e.clk.Now())
	e.setEntries(t, web)

	s := e.open(t)
	s.send(request(modern, "spiffe://example.org/web"))
	e.requestsSeen(t, 1)
	sv := e.issue(t, web)["web"]
	checkTLS(t, secrets(t, s.recv())[0], "spiffe://example.org/web", sv)

	// An entry federating with other.org: the first response also waits
	// for other.org's bundle.
	fed := entry("fed", "/fed", e.clk.Now())
	fed.FederatesWith = []spiffeid.TrustDomain{otherTD}
	e.setEntries(t, web, fed)
	e.issue(t, web, fed)
	s3 := e.open(t)
	s3.send(request(modern, "spiffe://other.org"))
	e.requestsSeen(t, 2)
	e.rotateCA(t, otherTD)
	if ss := secrets(t, s3.recv()); !slices.Equal(names(ss), []string{"spiffe://other.org"}) {
		t.Fatalf("federated: %q", names(ss))
	}

	api := entry("api", "/api", e.clk.Now())
	e.setEntries(t, web, api)
	s2 := e.open(t)
	s2.send(request(modern, "ROOTCA"))
	e.requestsSeen(t, 3)
	e.clk.Add(sds.DefaultIdentityWait)
	if ss := secrets(t, s2.recv()); !slices.Equal(names(ss), []string{"ROOTCA"}) {
		t.Fatalf("after the wait: %q", names(ss))
	}
}

// TestUnsubscribe: an empty names list after the first request stops the
// pushes; asking again is answered with the current secrets.
func TestUnsubscribe(t *testing.T) {
	e := startEnv(t, envOpts{})
	s := e.open(t)
	s.send(request(modern, "ROOTCA"))
	r1 := s.recv()
	s.send(ack(r1, nil, "", ""))
	e.requestsSeen(t, 2)
	e.rotateCA(t, td)
	s.send(ack(r1, []string{"ROOTCA"}, "", ""))
	r2 := s.recv()
	_, tds := spiffeTDs(t, secrets(t, r2)[0], "ROOTCA")
	if r2.VersionInfo != "2" || len(tds["example.org"]) != 2 {
		t.Fatalf("after resubscribing: version %q, %d authorities", r2.VersionInfo, len(tds["example.org"]))
	}
}

// TestRevokedAgentServesNoSecrets: when the server revokes the agent, open
// streams end and new calls fail with PermissionDenied.
func TestRevokedAgentServesNoSecrets(t *testing.T) {
	e := startEnv(t, envOpts{})
	web := entry("web", "/web", e.clk.Now())
	e.setEntries(t, web)
	e.issue(t, web)
	s := e.open(t)
	s.send(request(modern, "default"))
	s.recv()
	if err := e.cache.Revoke(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.s.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("open stream after revocation: %v", err)
	}
	if _, err := e.client.FetchSecrets(ctxT(t), request(modern, "ROOTCA")); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("FetchSecrets after revocation: %v", err)
	}
}

// TestNoBundleYet: an agent that has no trust bundle (never attested)
// answers Unavailable once the first response's wait is over.
func TestNoBundleYet(t *testing.T) {
	e := startEnv(t, envOpts{noBundle: true})
	if _, err := e.client.FetchSecrets(ctxT(t), request(modern, "ROOTCA")); status.Code(err) != codes.Unavailable {
		t.Fatalf("FetchSecrets: %v, want Unavailable", err)
	}
	s := e.open(t)
	s.send(request(modern, "ROOTCA"))
	e.requestsSeen(t, 1)
	e.clk.Add(sds.DefaultIdentityWait)
	if _, err := s.s.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("StreamSecrets: %v, want Unavailable", err)
	}
}

func TestDeltaSecretsUnimplemented(t *testing.T) {
	e := startEnv(t, envOpts{})
	ds, err := e.client.DeltaSecrets(ctxT(t))
	if err == nil {
		_, err = ds.Recv()
	}
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("DeltaSecrets: %v", err)
	}
}
