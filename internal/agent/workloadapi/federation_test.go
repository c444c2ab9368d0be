package workloadapi_test

import (
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// TestUnauthenticatedVerifierGetsNoFederatedBundle: with
// AllowUnauthenticatedVerifiers, a caller without an entry gets our bundle
// (X.509 and JWT) and validates our JWT-SVIDs, but no federated bundle and
// no federated JWT-SVID, as in SPIRE: federation is granted per entry.
func TestUnauthenticatedVerifierGetsNoFederatedBundle(t *testing.T) {
	e := startEnv(t, envOpts{unauthVerifiers: true})
	other := spiffeid.RequireTrustDomainFromString("other.org")
	otherCA := newTestCA(t, other)
	if err := e.cache.SetBundle(otherCA.bundle(t)); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	x509s, err := workloadapi.FetchX509Bundles(ctx, workloadapi.WithAddr(e.addr))
	if err != nil {
		t.Fatal(err)
	}
	if x509s.Len() != 1 || !x509s.Has(td) {
		t.Fatalf("X.509 bundles of an identity-less verifier: %d (has %s: %v), want ours only", x509s.Len(), other, x509s.Has(other))
	}
	jwts, err := workloadapi.FetchJWTBundles(ctx, workloadapi.WithAddr(e.addr))
	if err != nil {
		t.Fatal(err)
	}
	if jwts.Len() != 1 || !jwts.Has(td) {
		t.Fatalf("JWT bundles of an identity-less verifier: %d (has %s: %v), want ours only", jwts.Len(), other, jwts.Has(other))
	}
	ours, err := e.ca.mintJWT(mustID(t, "/svc"), []string{"me"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := workloadapi.ValidateJWTSVID(ctx, ours, "me", workloadapi.WithAddr(e.addr)); err != nil {
		t.Fatalf("our JWT-SVID: %v", err)
	}
	theirs, err := otherCA.mintJWT(spiffeid.RequireFromPath(other, "/svc"), []string{"me"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := workloadapi.ValidateJWTSVID(ctx, theirs, "me", workloadapi.WithAddr(e.addr)); err == nil {
		t.Fatal("an identity-less verifier validated a JWT-SVID of a federated trust domain")
	}
}
