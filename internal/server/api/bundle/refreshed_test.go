package bundle_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/sigil-spiffe/sigil/internal/server/api/bundle"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// TestGetFederatedBundleRefreshedAt: GetFederatedBundle tells when the
// server last fetched the bundle from its trust domain (what the agent
// reports as the bundle's age), and says nothing for a bundle only set
// by hand.
func TestGetFederatedBundleRefreshedAt(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, name := range []string{"fetched.test", "manual.test"} {
		_, err := e.client.BatchSetFederatedBundle(ctx, &bundlev1.BatchSetFederatedBundleRequest{Bundle: []*types.Bundle{{
			TrustDomain: name, X509Authorities: []*types.X509Certificate{{Asn1: testca.SelfSignedDER(t)}},
		}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	at := time.Unix(1_800_000_000, 0)
	if err := e.st.SetBundleRefreshed(ctx, "fetched.test", at); err != nil {
		t.Fatal(err)
	}

	get := func(name string) []string {
		t.Helper()
		var md metadata.MD
		if _, err := e.client.GetFederatedBundle(ctx, &bundlev1.GetFederatedBundleRequest{TrustDomain: name}, grpc.Header(&md)); err != nil {
			t.Fatal(err)
		}
		return md.Get(bundle.RefreshedAtHeader)
	}
	if got := get("fetched.test"); len(got) != 1 || got[0] != strconv.FormatInt(at.Unix(), 10) {
		t.Fatalf("%s of a fetched bundle: %q, want %d", bundle.RefreshedAtHeader, got, at.Unix())
	}
	if got := get("manual.test"); len(got) != 0 {
		t.Fatalf("%s of a bundle set by hand: %q, want none", bundle.RefreshedAtHeader, got)
	}
}
