package bundle_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/datastore/sqlstore"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/server/api/bundle"
	"github.com/sigil-spiffe/sigil/internal/server/api/rpccontext"
	"github.com/sigil-spiffe/sigil/internal/server/entrycache"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

type env struct {
	st     *sqlstore.Store
	cache  *entrycache.Cache
	client bundlev1.BundleClient
	wake   <-chan struct{}
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	st, err := sqlstore.Open(ctx, sqlstore.Config{DatabaseType: "sqlite3", ConnectionString: filepath.Join(t.TempDir(), "ds.sqlite3")})
	if err != nil {
		t.Fatal(err)
	}
	cache := entrycache.New(entrycache.Config{Store: st})
	if err := cache.Load(ctx); err != nil {
		t.Fatal(err)
	}
	wake, unsub := cache.Subscribe(spiffeid.RequireFromString("spiffe://example.org/spire/agent/watcher"))
	svc := bundle.New(bundle.Config{Store: st, TrustDomain: td})
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return h(rpccontext.WithCaller(ctx, rpccontext.Caller{Local: true, Admin: true}), req)
	}))
	svc.Register(srv)
	sock := filepath.Join(testutil.ShortTempDir(t), "api.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		unsub()
		st.Close()
	})
	return &env{st: st, cache: cache, client: bundlev1.NewBundleClient(conn), wake: wake}
}

// woken reports (and clears) whether subscribers were signalled once
// the cache applied what the store's journals hold (as its Run does when
// the store notifies it).
func (e *env) woken(t *testing.T) bool {
	t.Helper()
	if err := e.cache.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-e.wake:
		return true
	default:
		return false
	}
}

func newCert(t *testing.T, cn string) []byte {
	t.Helper()
	return testca.SelfSignedDER(t, testca.Subject(cn), testca.KeyUsage(x509.KeyUsageCertSign))
}

func newJWTKey(t *testing.T, kid string) *types.JWTKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return &types.JWTKey{KeyId: kid, PublicKey: pub, ExpiresAt: time.Now().Add(time.Hour).Unix()}
}

func (e *env) ownBundle(t *testing.T) *datastore.Bundle {
	t.Helper()
	b, err := e.st.SetBundle(context.Background(), &datastore.Bundle{
		TrustDomain: td.Name(), X509Authorities: []datastore.X509Authority{{ASN1: newCert(t, "root")}}, RefreshHint: 300,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.woken(t)
	return b
}

func TestOwnBundle(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := e.client.GetBundle(ctx, &bundlev1.GetBundleRequest{}); status.Code(err) != codes.NotFound {
		t.Errorf("GetBundle without a bundle: %v", err)
	}
	if _, err := e.client.AppendBundle(ctx, &bundlev1.AppendBundleRequest{X509Authorities: []*types.X509Certificate{{Asn1: newCert(t, "x")}}}); status.Code(err) != codes.NotFound {
		t.Errorf("AppendBundle without a bundle: %v", err)
	}
	stored := e.ownBundle(t)

	got, err := e.client.GetBundle(ctx, &bundlev1.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got.TrustDomain != "example.org" || len(got.X509Authorities) != 1 || got.RefreshHint != 300 || got.SequenceNumber != stored.SequenceNumber ||
		!slices.Equal(got.X509Authorities[0].Asn1, stored.X509Authorities[0].ASN1) {
		t.Errorf("GetBundle = %v", got)
	}
	got, err = e.client.GetBundle(ctx, &bundlev1.GetBundleRequest{OutputMask: &types.BundleMask{RefreshHint: true}})
	if err != nil {
		t.Fatal(err)
	}
	if got.TrustDomain != "example.org" || got.X509Authorities != nil || got.RefreshHint != 300 || got.SequenceNumber != 0 {
		t.Errorf("masked GetBundle = %v", got)
	}

	for _, bad := range []struct {
		req *bundlev1.AppendBundleRequest
		msg string
	}{
		{&bundlev1.AppendBundleRequest{}, "no authorities to append"},
		{&bundlev1.AppendBundleRequest{X509Authorities: []*types.X509Certificate{{Asn1: []byte("junk")}}}, "failed to convert X.509 authority: "},
		{&bundlev1.AppendBundleRequest{JwtAuthorities: []*types.JWTKey{{PublicKey: newJWTKey(t, "k").PublicKey}}}, "failed to convert JWT authority: invalid JWT authority 0: missing key ID"},
		{&bundlev1.AppendBundleRequest{JwtAuthorities: []*types.JWTKey{{KeyId: "k", PublicKey: []byte("junk")}}}, "failed to convert JWT authority: "},
	} {
		_, err := e.client.AppendBundle(ctx, bad.req)
		if status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), bad.msg) {
			t.Errorf("AppendBundle(%v) = %v, want InvalidArgument %q", bad.req, err, bad.msg)
		}
	}
	if e.woken(t) {
		t.Error("failed appends woke subscribers")
	}

	k1 := newJWTKey(t, "k1")
	got, err = e.client.AppendBundle(ctx, &bundlev1.AppendBundleRequest{X509Authorities: []*types.X509Certificate{{Asn1: newCert(t, "root2")}}, JwtAuthorities: []*types.JWTKey{k1}})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.X509Authorities) != 2 || len(got.JwtAuthorities) != 1 || got.JwtAuthorities[0].KeyId != "k1" || got.SequenceNumber <= stored.SequenceNumber {
		t.Errorf("AppendBundle = %v", got)
	}
	if !e.woken(t) {
		t.Error("AppendBundle did not wake subscribers")
	}

	if _, err := e.client.PublishJWTAuthority(ctx, &bundlev1.PublishJWTAuthorityRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("PublishJWTAuthority without a key: %v", err)
	}
	pub, err := e.client.PublishJWTAuthority(ctx, &bundlev1.PublishJWTAuthorityRequest{JwtAuthority: newJWTKey(t, "k2")})
	if err != nil {
		t.Fatal(err)
	}
	var kids []string
	for _, k := range pub.JwtAuthorities {
		kids = append(kids, k.KeyId)
	}
	slices.Sort(kids)
	if !slices.Equal(kids, []string{"k1", "k2"}) {
		t.Errorf("PublishJWTAuthority returned %v", kids)
	}
	if !e.woken(t) {
		t.Error("PublishJWTAuthority did not wake subscribers")
	}
}

func fed(t *testing.T, name string) *types.Bundle {
	return &types.Bundle{TrustDomain: name, X509Authorities: []*types.X509Certificate{{Asn1: newCert(t, name)}}, RefreshHint: 60}
}

func codesOf[R interface{ GetStatus() *types.Status }](rs []R) []codes.Code {
	var out []codes.Code
	for _, r := range rs {
		out = append(out, codes.Code(r.GetStatus().Code))
	}
	return out
}

func TestFederatedBundles(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.ownBundle(t)

	junk := fed(t, "junk.org")
	junk.X509Authorities[0].Asn1 = []byte("junk")
	cr, err := e.client.BatchCreateFederatedBundle(ctx, &bundlev1.BatchCreateFederatedBundleRequest{
		Bundle:     []*types.Bundle{fed(t, "a.org"), fed(t, "example.org"), fed(t, "Bad.Org"), junk, fed(t, "a.org"), fed(t, "spiffe://b.org")},
		OutputMask: &types.BundleMask{RefreshHint: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []codes.Code{codes.OK, codes.InvalidArgument, codes.InvalidArgument, codes.InvalidArgument, codes.AlreadyExists, codes.OK}
	if got := codesOf(cr.Results); !slices.Equal(got, want) {
		t.Fatalf("create codes = %v, want %v", got, want)
	}
	if r := cr.Results[0]; r.Bundle.TrustDomain != "a.org" || r.Bundle.RefreshHint != 60 || r.Bundle.X509Authorities != nil {
		t.Errorf("created (masked) = %v", r.Bundle)
	}
	if m := cr.Results[1].Status.Message; m != "creating a federated bundle for the server's own trust domain is not allowed" {
		t.Errorf("own TD message = %q", m)
	}
	if m := cr.Results[4].Status.Message; m != "bundle already exists" || cr.Results[4].Bundle != nil {
		t.Errorf("duplicate = %v", cr.Results[4])
	}
	if cr.Results[5].Bundle.TrustDomain != "b.org" {
		t.Errorf("spiffe:// form not normalized: %v", cr.Results[5].Bundle.TrustDomain)
	}
	if !e.woken(t) {
		t.Error("create did not wake subscribers")
	}

	n, err := e.client.CountBundles(ctx, &bundlev1.CountBundlesRequest{})
	if err != nil || n.Count != 3 {
		t.Errorf("CountBundles = %v, %v; want 3", n, err)
	}
	// List: ours is left out; page by 1.
	var names []string
	token := ""
	for range 10 {
		resp, err := e.client.ListFederatedBundles(ctx, &bundlev1.ListFederatedBundlesRequest{PageSize: 1, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range resp.Bundles {
			names = append(names, b.TrustDomain)
		}
		if token = resp.NextPageToken; token == "" {
			break
		}
	}
	if !slices.Equal(names, []string{"a.org", "b.org"}) {
		t.Errorf("listed %v", names)
	}

	if _, err := e.client.GetFederatedBundle(ctx, &bundlev1.GetFederatedBundleRequest{TrustDomain: "example.org"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("GetFederatedBundle(own): %v", err)
	}
	if _, err := e.client.GetFederatedBundle(ctx, &bundlev1.GetFederatedBundleRequest{TrustDomain: "none.org"}); status.Code(err) != codes.NotFound {
		t.Errorf("GetFederatedBundle(absent): %v", err)
	}
	if _, err := e.client.GetFederatedBundle(ctx, &bundlev1.GetFederatedBundleRequest{TrustDomain: "BAD"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("GetFederatedBundle(bad): %v", err)
	}
	a, err := e.client.GetFederatedBundle(ctx, &bundlev1.GetFederatedBundleRequest{TrustDomain: "a.org"})
	if err != nil {
		t.Fatal(err)
	}

	// Update only the refresh hint: authorities stay.
	upd := fed(t, "a.org")
	upd.RefreshHint = 999
	ur, err := e.client.BatchUpdateFederatedBundle(ctx, &bundlev1.BatchUpdateFederatedBundleRequest{
		Bundle:    []*types.Bundle{upd, fed(t, "none.org"), fed(t, "example.org")},
		InputMask: &types.BundleMask{RefreshHint: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := codesOf(ur.Results); !slices.Equal(got, []codes.Code{codes.OK, codes.NotFound, codes.InvalidArgument}) {
		t.Fatalf("update codes = %v", got)
	}
	if b := ur.Results[0].Bundle; b.RefreshHint != 999 || !slices.Equal(b.X509Authorities[0].Asn1, a.X509Authorities[0].Asn1) || b.SequenceNumber <= a.SequenceNumber {
		t.Errorf("updated = %v", b)
	}

	// Set: creates c.org, replaces b.org.
	newB := fed(t, "b.org")
	sr, err := e.client.BatchSetFederatedBundle(ctx, &bundlev1.BatchSetFederatedBundleRequest{Bundle: []*types.Bundle{fed(t, "c.org"), newB, fed(t, "example.org")}})
	if err != nil {
		t.Fatal(err)
	}
	if got := codesOf(sr.Results); !slices.Equal(got, []codes.Code{codes.OK, codes.OK, codes.InvalidArgument}) {
		t.Fatalf("set codes = %v", got)
	}
	if !slices.Equal(sr.Results[1].Bundle.X509Authorities[0].Asn1, newB.X509Authorities[0].Asn1) {
		t.Error("set did not replace b.org")
	}
	if !e.woken(t) {
		t.Error("update/set did not wake subscribers")
	}
}

func TestDeleteFederatedBundle(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.ownBundle(t)
	if _, err := e.client.BatchCreateFederatedBundle(ctx, &bundlev1.BatchCreateFederatedBundleRequest{
		Bundle: []*types.Bundle{fed(t, "a.org"), fed(t, "b.org"), fed(t, "c.org")},
	}); err != nil {
		t.Fatal(err)
	}
	e.woken(t)
	mkEntry := func(path string, fw ...string) *datastore.Entry {
		return &datastore.Entry{SPIFFEID: "spiffe://example.org" + path, ParentID: "spiffe://example.org/spire/agent/x",
			Selectors: []selector.Selector{{Type: "unix", Value: "uid:1"}}, FederatesWith: fw}
	}
	res, err := e.st.CreateEntries(ctx, []*datastore.Entry{mkEntry("/fa", "a.org", "c.org"), mkEntry("/fb", "b.org")})
	if err != nil || res[0].Err != nil || res[1].Err != nil {
		t.Fatal(err, res)
	}
	faID, fbID := res[0].Entry.ID, res[1].Entry.ID
	e.woken(t) // the entries' own wake

	del := func(mode bundlev1.BatchDeleteFederatedBundleRequest_Mode, tds ...string) []*bundlev1.BatchDeleteFederatedBundleResponse_Result {
		t.Helper()
		r, err := e.client.BatchDeleteFederatedBundle(ctx, &bundlev1.BatchDeleteFederatedBundleRequest{TrustDomains: tds, Mode: mode})
		if err != nil {
			t.Fatal(err)
		}
		return r.Results
	}
	r := del(bundlev1.BatchDeleteFederatedBundleRequest_RESTRICT, "a.org", "none.org", "example.org", "B A D")
	if got := codesOf(r); !slices.Equal(got, []codes.Code{codes.FailedPrecondition, codes.NotFound, codes.InvalidArgument, codes.InvalidArgument}) {
		t.Fatalf("restrict codes = %v (%v)", got, r)
	}
	if r[0].TrustDomain != "a.org" || !strings.Contains(r[0].Status.Message, "federated with 1 registration entries") {
		t.Errorf("restrict result = %v", r[0])
	}
	if _, err := e.st.GetBundle(ctx, "a.org"); err != nil {
		t.Errorf("RESTRICT deleted the bundle: %v", err)
	}
	if e.woken(t) {
		t.Error("refused deletes woke subscribers")
	}

	if got := codesOf(del(bundlev1.BatchDeleteFederatedBundleRequest_DISSOCIATE, "a.org")); !slices.Equal(got, []codes.Code{codes.OK}) {
		t.Fatalf("dissociate = %v", got)
	}
	fa, err := e.st.GetEntry(ctx, faID)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(fa.FederatesWith, []string{"c.org"}) {
		t.Errorf("after DISSOCIATE entry federates with %v", fa.FederatesWith)
	}
	if !e.woken(t) {
		t.Error("delete did not wake subscribers")
	}

	if got := codesOf(del(bundlev1.BatchDeleteFederatedBundleRequest_DELETE, "b.org")); !slices.Equal(got, []codes.Code{codes.OK}) {
		t.Fatalf("delete = %v", got)
	}
	if _, err := e.st.GetEntry(ctx, fbID); err == nil {
		t.Error("DELETE mode kept the federated entry")
	}
	if _, err := e.st.GetBundle(ctx, "b.org"); err == nil {
		t.Error("bundle b.org still present")
	}
	if _, err := e.client.BatchDeleteFederatedBundle(ctx, &bundlev1.BatchDeleteFederatedBundleRequest{TrustDomains: []string{"c.org"}, Mode: 7}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("unknown mode: %v", err)
	}
}
