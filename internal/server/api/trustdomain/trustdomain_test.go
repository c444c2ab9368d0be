package trustdomain_test

import (
	"context"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	trustdomainv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/trustdomain/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	serverapp "github.com/sigil-spiffe/sigil/internal/app/server"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/fedstatus"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/inproc"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

var (
	ownTD  = spiffeid.RequireTrustDomainFromString("example.org")
	peerTD = spiffeid.RequireTrustDomainFromString("peer.test")
	confTD = spiffeid.RequireTrustDomainFromString("config.test")
)

// startServer runs a real server (in process) federating with config.test
// through its configuration, and returns a trustdomain/v1 client on its
// admin socket.
func startServer(t *testing.T) (trustdomainv1.TrustDomainClient, bundlev1.BundleClient) {
	t.Helper()
	dir := testutil.ShortTempDir(t)
	cfg := inproc.ServerConfig(ownTD, filepath.Join(dir, "data"), filepath.Join(dir, "api.sock"), 0)
	u, _ := url.Parse("https://127.0.0.1:1")
	cfg.Federation = &config.Federation{FederatesWith: []config.FederatesWith{{TrustDomain: confTD, BundleEndpointURL: u, Profile: config.ProfileHTTPSWeb}}}
	srv := inproc.RunServer(t, cfg, nil, serverapp.Options{})
	conn := srv.Admin(t).Conn
	return trustdomainv1.NewTrustDomainClient(conn), bundlev1.NewBundleClient(conn)
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func spiffeRel(td, url, endpointID string, bundle *types.Bundle) *types.FederationRelationship {
	return &types.FederationRelationship{TrustDomain: td, BundleEndpointUrl: url, TrustDomainBundle: bundle,
		BundleEndpointProfile: &types.FederationRelationship_HttpsSpiffe{HttpsSpiffe: &types.HTTPSSPIFFEProfile{EndpointSpiffeId: endpointID}}}
}

func bundleOf(t *testing.T, td spiffeid.TrustDomain) *types.Bundle {
	return &types.Bundle{TrustDomain: td.Name(), X509Authorities: []*types.X509Certificate{{Asn1: testca.SelfSignedDER(t, testca.TrustDomain(td))}}}
}

func TestRelationshipCRUD(t *testing.T) {
	client, bundles := startServer(t)
	peerBundle := bundleOf(t, peerTD)

	created, err := client.BatchCreateFederationRelationship(ctx(t), &trustdomainv1.BatchCreateFederationRelationshipRequest{
		FederationRelationships: []*types.FederationRelationship{
			spiffeRel("peer.test", "https://peer.test:8443", "spiffe://peer.test/spire/server", peerBundle),
			{TrustDomain: "spiffe://web.test", BundleEndpointUrl: "https://web.test/bundle", BundleEndpointProfile: &types.FederationRelationship_HttpsWeb{HttpsWeb: &types.HTTPSWebProfile{}}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range created.Results {
		if r.Status.Code != int32(codes.OK) {
			t.Fatalf("create %d: %v", i, r.Status)
		}
	}
	got := created.Results[0].FederationRelationship
	if got.TrustDomain != "peer.test" || got.GetHttpsSpiffe().GetEndpointSpiffeId() != "spiffe://peer.test/spire/server" ||
		got.TrustDomainBundle == nil || got.TrustDomainBundle.SequenceNumber != 1 || string(got.TrustDomainBundle.X509Authorities[0].Asn1) != string(peerBundle.X509Authorities[0].Asn1) {
		t.Errorf("created %v", got)
	}
	if w := created.Results[1].FederationRelationship; w.TrustDomain != "web.test" || w.GetHttpsWeb() == nil || w.TrustDomainBundle != nil {
		t.Errorf("created %v", w)
	}
	// The bootstrap bundle is the federated bundle now.
	if b, err := bundles.GetFederatedBundle(ctx(t), &bundlev1.GetFederatedBundleRequest{TrustDomain: "peer.test"}); err != nil || len(b.X509Authorities) != 1 {
		t.Fatalf("federated bundle after create: %v, %v", b, err)
	}

	// Bad input: a precise error each, nothing written.
	bad := []struct {
		name string
		fr   *types.FederationRelationship
		code codes.Code
		msg  string
	}{
		{"duplicate", spiffeRel("peer.test", "https://other:1", "spiffe://peer.test/spire/server", nil), codes.AlreadyExists, "federation relationship already exists"},
		{"no profile", &types.FederationRelationship{TrustDomain: "x.test", BundleEndpointUrl: "https://x"}, codes.InvalidArgument, "unsupported bundle endpoint profile"},
		{"http URL", spiffeRel("x.test", "http://x.test", "spiffe://x.test/s", nil), codes.InvalidArgument, "must use the https scheme"},
		{"URL without host", spiffeRel("x.test", "https:///b", "spiffe://x.test/s", nil), codes.InvalidArgument, "must specify the host"},
		{"endpoint ID in another domain", spiffeRel("x.test", "https://x", "spiffe://y.test/spire/server", nil), codes.InvalidArgument, `is not in trust domain "x.test"`},
		{"endpoint ID invalid", spiffeRel("x.test", "https://x", "x.test/server", nil), codes.InvalidArgument, "failed to parse endpoint SPIFFE ID"},
		{"own trust domain", spiffeRel("example.org", "https://x", "spiffe://example.org/spire/server", nil), codes.InvalidArgument, "unable to create federation relationship for server trust domain"},
		{"bad trust domain", spiffeRel("Not A TD", "https://x", "spiffe://x.test/s", nil), codes.InvalidArgument, "failed to parse trust domain"},
		{"bundle of another domain", spiffeRel("x.test", "https://x", "spiffe://x.test/s", bundleOf(t, peerTD)), codes.InvalidArgument, "must match the trust domain of the federation relationship"},
		{"bundle without X.509", spiffeRel("x.test", "https://x", "spiffe://x.test/s", &types.Bundle{TrustDomain: "x.test"}), codes.InvalidArgument, "no X.509 authority"},
		{"empty", &types.FederationRelationship{}, codes.InvalidArgument, "trust domain is missing"},
	}
	for _, c := range bad {
		resp, err := client.BatchCreateFederationRelationship(ctx(t), &trustdomainv1.BatchCreateFederationRelationshipRequest{FederationRelationships: []*types.FederationRelationship{c.fr}})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		st := resp.Results[0].Status
		if st.Code != int32(c.code) || !strings.Contains(st.Message, c.msg) || resp.Results[0].FederationRelationship != nil {
			t.Errorf("%s: status %v, want %v containing %q", c.name, st, c.code, c.msg)
		}
	}

	// List: the stored ones (not the configuration's), and every status
	// in the trailer.
	var trailer metadata.MD
	list, err := client.ListFederationRelationships(ctx(t), &trustdomainv1.ListFederationRelationshipsRequest{}, grpc.Trailer(&trailer))
	if err != nil {
		t.Fatal(err)
	}
	if len(list.FederationRelationships) != 2 || list.FederationRelationships[0].TrustDomain != "peer.test" || list.FederationRelationships[1].TrustDomain != "web.test" {
		t.Fatalf("listed %v", list.FederationRelationships)
	}
	sts := fedstatus.FromMD(trailer)
	sources := map[string]string{}
	for _, s := range sts {
		sources[s.TrustDomain] = s.Source
	}
	if len(sts) != 3 || sources["config.test"] != fedstatus.SourceConfig || sources["peer.test"] != fedstatus.SourceDatastore {
		t.Errorf("statuses %+v", sts)
	}
	// Paged.
	page, err := client.ListFederationRelationships(ctx(t), &trustdomainv1.ListFederationRelationshipsRequest{PageSize: 1})
	if err != nil || len(page.FederationRelationships) != 1 || page.NextPageToken == "" {
		t.Fatalf("page 1: %v, %v", page, err)
	}
	page, err = client.ListFederationRelationships(ctx(t), &trustdomainv1.ListFederationRelationshipsRequest{PageSize: 1, PageToken: page.NextPageToken})
	if err != nil || len(page.FederationRelationships) != 1 || page.FederationRelationships[0].TrustDomain != "web.test" {
		t.Fatalf("page 2: %v, %v", page, err)
	}
	_, err = client.ListFederationRelationships(ctx(t), &trustdomainv1.ListFederationRelationshipsRequest{PageSize: 1, PageToken: "!!"})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad page token: %v", err)
	}

	// Get, masked.
	fr, err := client.GetFederationRelationship(ctx(t), &trustdomainv1.GetFederationRelationshipRequest{TrustDomain: "peer.test",
		OutputMask: &types.FederationRelationshipMask{BundleEndpointUrl: true}})
	if err != nil || fr.BundleEndpointUrl != "https://peer.test:8443" || fr.BundleEndpointProfile != nil || fr.TrustDomainBundle != nil {
		t.Fatalf("get masked: %v, %v", fr, err)
	}
	// The configuration's relationship: NotFound (as SPIRE), its status in
	// the trailer.
	trailer = nil
	_, err = client.GetFederationRelationship(ctx(t), &trustdomainv1.GetFederationRelationshipRequest{TrustDomain: "config.test"}, grpc.Trailer(&trailer))
	if status.Code(err) != codes.NotFound {
		t.Fatalf("get of a configuration relationship: %v", err)
	}
	if sts := fedstatus.FromMD(trailer); len(sts) != 1 || sts[0].Source != fedstatus.SourceConfig || sts[0].BundleEndpointURL != "https://127.0.0.1:1" {
		t.Errorf("configuration relationship status %+v", sts)
	}

	// Update the URL only (masked), then a bad update that changes nothing.
	upd, err := client.BatchUpdateFederationRelationship(ctx(t), &trustdomainv1.BatchUpdateFederationRelationshipRequest{
		FederationRelationships: []*types.FederationRelationship{{TrustDomain: "peer.test", BundleEndpointUrl: "https://peer.test:9443"}},
		InputMask:               &types.FederationRelationshipMask{BundleEndpointUrl: true},
	})
	if err != nil || upd.Results[0].Status.Code != 0 || upd.Results[0].FederationRelationship.BundleEndpointUrl != "https://peer.test:9443" ||
		upd.Results[0].FederationRelationship.GetHttpsSpiffe().GetEndpointSpiffeId() != "spiffe://peer.test/spire/server" {
		t.Fatalf("update: %v, %v", upd, err)
	}
	upd, err = client.BatchUpdateFederationRelationship(ctx(t), &trustdomainv1.BatchUpdateFederationRelationshipRequest{
		FederationRelationships: []*types.FederationRelationship{
			spiffeRel("peer.test", "ftp://peer.test", "spiffe://peer.test/spire/server", nil),
			spiffeRel("none.test", "https://none.test", "spiffe://none.test/spire/server", nil),
		},
	})
	if err != nil || upd.Results[0].Status.Code != int32(codes.InvalidArgument) || upd.Results[1].Status.Code != int32(codes.NotFound) {
		t.Fatalf("bad updates: %v, %v", upd, err)
	}
	if fr, _ := client.GetFederationRelationship(ctx(t), &trustdomainv1.GetFederationRelationshipRequest{TrustDomain: "peer.test"}); fr.BundleEndpointUrl != "https://peer.test:9443" {
		t.Errorf("a refused update changed the relationship: %v", fr)
	}

	// RefreshBundle: unknown trust domain, and a failing fetch.
	if _, err := client.RefreshBundle(ctx(t), &trustdomainv1.RefreshBundleRequest{TrustDomain: "none.test"}); status.Code(err) != codes.NotFound ||
		!strings.Contains(status.Convert(err).Message(), `no relationship with trust domain "none.test"`) {
		t.Errorf("refresh of an unknown trust domain: %v", err)
	}
	if _, err := client.RefreshBundle(ctx(t), &trustdomainv1.RefreshBundleRequest{TrustDomain: "config.test"}); status.Code(err) != codes.Internal ||
		!strings.Contains(status.Convert(err).Message(), "failed to refresh bundle") {
		t.Errorf("refresh of an unreachable endpoint: %v", err)
	}

	// Delete: once OK, then NotFound; the bundle stays.
	del, err := client.BatchDeleteFederationRelationship(ctx(t), &trustdomainv1.BatchDeleteFederationRelationshipRequest{TrustDomains: []string{"peer.test", "peer.test", "", "Bad TD"}})
	if err != nil {
		t.Fatal(err)
	}
	want := []codes.Code{codes.OK, codes.NotFound, codes.InvalidArgument, codes.InvalidArgument}
	for i, r := range del.Results {
		if r.Status.Code != int32(want[i]) {
			t.Errorf("delete %d: %v, want %v", i, r.Status, want[i])
		}
	}
	if del.Results[0].TrustDomain != "peer.test" {
		t.Errorf("delete result names %q", del.Results[0].TrustDomain)
	}
	if _, err := bundles.GetFederatedBundle(ctx(t), &bundlev1.GetFederatedBundleRequest{TrustDomain: "peer.test"}); err != nil {
		t.Errorf("bundle after relationship delete: %v", err)
	}
}
