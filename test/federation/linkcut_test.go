package federation

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/internal/telemetry/telemetrytest"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// recoverDeadline bounds the recovery after the link is back: a fetch
// started during the cut hangs on its dropped connection until the
// server's fetch timeout (30s), the next comes within the refresh hint.
// Not a timing assertion: usually it takes seconds.
const recoverDeadline = 40 * time.Second

// TestFederatedLinkCut: cloud.test and edge.test, each in its own network
// namespace, the link between the two cut while each server keeps its own
// agent (nftables drops everything between the namespaces). Both sides
// keep serving the peer's last bundle, also from agents restarted during
// the cut, and the workloads keep authenticating each other; the edge
// agent reports how old its cloud.test bundle is: fetched before the cut.
// When the link is back, refreshes resume with no manual step: a root each
// domain added to its bundle during the cut reaches the other's workload,
// and the reported fetch time moves past the cut.
func TestFederatedLinkCut(t *testing.T) {
	p := testutil.NewPartition(t) // skips without root, ip and nft
	t.Parallel()
	cloud, edge := newDomains(t, testutil.ServerConfig{}, p)
	startDomains(t, cloud, edge)
	cloudSrc, edgeSrc := cloud.source(t), edge.source(t)
	expectMutualTLS(t, cloud, edge, cloudSrc, edgeSrc)
	// The edge agent learns when its server last fetched cloud.test's
	// bundle (the server says so with the bundle).
	poll(t, "the edge agent reporting when cloud.test's bundle was fetched", func() bool { return edge.bundleUpdated(t, cloudTD) > 0 })

	cutAt := time.Now()
	p.Drop(t)
	// Each side changes its bundle during the cut: a root added.
	cloudExtra := testca.New(t, testca.TrustDomain(cloudTD), testca.Subject("cloud.test extra root")).Cert
	edgeExtra := testca.New(t, testca.TrustDomain(edgeTD), testca.Subject("edge.test extra root")).Cert
	appendRoot(t, cloud.srv, cloudExtra)
	appendRoot(t, edge.srv, edgeExtra)

	// Both agents restart during the cut and serve the peer's last bundle.
	for _, d := range []*domain{cloud, edge} {
		d.agent.Stop(t)
		d.agent.Start(t)
	}
	cloudSrc, edgeSrc = cloud.source(t), edge.source(t)
	expectMutualTLS(t, cloud, edge, cloudSrc, edgeSrc)
	if hasCert(bundleOf(edgeSrc, cloudTD), cloudExtra) || hasCert(bundleOf(cloudSrc, edgeTD), edgeExtra) {
		t.Fatal("a root added during the cut crossed it")
	}
	// The restarted edge agent reports a fetch from before the cut.
	var during float64
	poll(t, "the restarted edge agent's metrics", func() bool { during = edge.bundleUpdated(t, cloudTD); return during > 0 })
	if during > float64(cutAt.Unix()) {
		t.Fatalf("the edge agent reports cloud.test's bundle fetched at %v during the cut, which began at %d", during, cutAt.Unix())
	}
	t.Logf("during the cut the edge agent reports cloud.test's bundle as fetched %s before the cut", cutAt.Sub(time.Unix(int64(during), 0)).Round(time.Second))

	p.Heal(t)
	healed := time.Now()
	recovered := func(what string, cond func() bool) {
		t.Helper()
		if err := testutil.Poll(recoverDeadline, 50*time.Millisecond, func() (bool, error) { return cond(), nil }); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	recovered("the root cloud.test added during the cut in the edge workload's bundle", func() bool { return hasCert(bundleOf(edgeSrc, cloudTD), cloudExtra) })
	recovered("the root edge.test added during the cut in the cloud workload's bundle", func() bool { return hasCert(bundleOf(cloudSrc, edgeTD), edgeExtra) })
	t.Logf("after the link came back, the roots added during the cut were at both workloads in %s (refresh hint %s)", time.Since(healed).Round(time.Millisecond), refreshHint)
	recovered("the edge agent reporting a fetch of cloud.test's bundle after the cut", func() bool {
		return edge.bundleUpdated(t, cloudTD) > float64(cutAt.Unix())
	})
	expectMutualTLS(t, cloud, edge, cloudSrc, edgeSrc)
}

// bundleUpdated is d's agent's sigil_agent_federated_bundle_updated_
// timestamp_seconds for td (0 when absent or unreachable), scraped inside
// d's namespace.
func (d *domain) bundleUpdated(t *testing.T, td spiffeid.TrustDomain) float64 {
	t.Helper()
	client := http.DefaultClient
	if d.ns != "" {
		client = testutil.HTTPClientIn(d.ns)
	}
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", d.agent.Config.HealthPort))
	if err != nil {
		return 0 // restarting
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return 0
	}
	m, err := telemetrytest.Parse(string(body))
	if err != nil {
		t.Fatal(err)
	}
	v, _ := m.Value(ageMetric, "trust_domain", td.Name())
	return v
}

// appendRoot adds an X.509 authority to s's own bundle (bundle/v1
// AppendBundle), as an operator adding a root does.
func appendRoot(t *testing.T, s *testutil.Server, root *x509.Certificate) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	req := &bundlev1.AppendBundleRequest{X509Authorities: []*types.X509Certificate{{Asn1: root.Raw}}}
	if _, err := s.Admin(t).Bundle.AppendBundle(ctx, req); err != nil {
		t.Fatalf("append a root to %s's bundle: %v", s.TrustDomain(), err)
	}
}

// expectJWTAcross: a JWT-SVID each domain's agent mints for its app
// validates through the other agent's ValidateJWTSVID for the other app
// (whose entry federates with the minting domain). Each call uses a new
// audience, so the tokens are signed with the current keys.
func expectJWTAcross(t *testing.T, a, b *domain) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	aud := fmt.Sprintf("peer-%d", time.Now().UnixNano())
	for _, pair := range [][2]*domain{{a, b}, {b, a}} {
		from, to := pair[0], pair[1]
		token, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud, Subject: from.app}, workloadapi.WithAddr(from.agent.SocketAddr()))
		if err != nil {
			t.Fatalf("%s JWT-SVID: %v", from.td(), err)
		}
		var got *jwtsvid.SVID
		// The verifier's agent may be a refresh behind a just-rotated key.
		poll(t, fmt.Sprintf("%s validating a %s JWT-SVID", to.td(), from.td()), func() bool {
			got, err = workloadapi.ValidateJWTSVID(ctx, token.Marshal(), aud, workloadapi.WithAddr(to.agent.SocketAddr()))
			return err == nil
		})
		if got.ID != from.app {
			t.Fatalf("%s validated %s, want %s", to.td(), got.ID, from.app)
		}
	}
}
