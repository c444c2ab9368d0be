package workloadapi_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// The Workload API details checked against the SPIFFE Workload API
// specification and SPIRE's agent, with go-spiffe as the client.

// TestHintsUniqueDefaultFirst: in X509-SVID and JWT-SVID responses the
// default identity (a hint-less entry, the oldest first) comes first, and
// a hint is unique (spec 5.2.1, 6.2.1: servers MUST ensure it): of the
// entries sharing one, only the oldest (then the smallest entry ID) is
// served, as SPIRE does.
func TestHintsUniqueDefaultFirst(t *testing.T) {
	e := startEnv(t, envOpts{})
	now := e.clk.Now()
	mk := func(eid, path, hint string, age time.Duration) *cache.Entry {
		en := entry(eid, mustID(t, path), now.Add(-age), uidSelector())
		en.Hint = hint
		return en
	}
	entries := []*cache.Entry{
		mk("e1", "/internal-old", "internal", 2*time.Hour),
		mk("e2", "/internal-new", "internal", time.Hour),
		mk("e3", "/default", "", 0),
		mk("e4", "/external", "external", 3*time.Hour),
		mk("e5", "/internal-tie", "internal", 2*time.Hour), // same age as e1, larger ID
	}
	svids := map[string]*cache.X509SVID{}
	for _, en := range entries {
		svids[en.ID] = e.ca.svid(t, en.SPIFFEID, now.Add(-time.Minute), now.Add(time.Hour))
	}
	e.addIdentity(t, entries, svids)
	want := "/default(), /external(external), /internal-old(internal)"

	// The raw responses: go-spiffe itself skips a repeated hint, which
	// would hide a server that sends one.
	ctx := ctxT(t)
	opt := workloadapi.WithAddr(e.addr)
	raw := rawClient(t, e)
	xst, err := raw.FetchX509SVID(withHeader(ctx), &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	xr, err := xst.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range xr.Svids {
		got = append(got, fmt.Sprintf("%s(%s)", strings.TrimPrefix(s.SpiffeId, "spiffe://example.org"), s.Hint))
	}
	if strings.Join(got, ", ") != want {
		t.Errorf("X509-SVIDs: %s, want %s", strings.Join(got, ", "), want)
	}
	jr, err := raw.FetchJWTSVID(withHeader(ctx), &workloadpb.JWTSVIDRequest{Audience: []string{"svc"}})
	if err != nil {
		t.Fatal(err)
	}
	got = nil
	for _, s := range jr.Svids {
		got = append(got, fmt.Sprintf("%s(%s)", strings.TrimPrefix(s.SpiffeId, "spiffe://example.org"), s.Hint))
	}
	if strings.Join(got, ", ") != want {
		t.Errorf("JWT-SVIDs: %s, want %s", strings.Join(got, ", "), want)
	}
	if def, err := workloadapi.FetchX509SVID(ctx, opt); err != nil || def.ID.Path() != "/default" {
		t.Errorf("default X509-SVID: %v, %v; want /default", def, err)
	}
	def, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "svc"}, opt)
	if err != nil || def.ID.Path() != "/default" {
		t.Errorf("default JWT-SVID: %v, %v; want /default", def, err)
	}
	// An entry left out for its hint is not the caller's to ask for by
	// SPIFFE ID either (SPIRE filters hints first).
	if _, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "svc", Subject: mustID(t, "/internal-new")}, opt); status.Code(err) != codes.PermissionDenied {
		t.Errorf("JWT-SVID of an entry left out for its hint: %v, want PermissionDenied", err)
	}
}

// TestStreamFullStateOnRemoval: every stream message is the full state
// (spec 4.3, 4.4): when one of the caller's entries is removed the next
// message no longer carries its SVID nor the bundle of the trust domain
// only it federated with; when none is left, each stream ends with
// PermissionDenied.
func TestStreamFullStateOnRemoval(t *testing.T) {
	e := startEnv(t, envOpts{})
	other := spiffeid.RequireTrustDomainFromString("other.org")
	if err := e.cache.SetBundle(newTestCA(t, other).bundle(t)); err != nil {
		t.Fatal(err)
	}
	now := e.clk.Now()
	idA, idB := mustID(t, "/a"), mustID(t, "/b")
	entA := entry("a", idA, now.Add(-time.Hour), uidSelector())
	entB := entry("b", idB, now, uidSelector())
	entB.FederatesWith = []spiffeid.TrustDomain{other}
	e.addIdentity(t, []*cache.Entry{entA, entB}, map[string]*cache.X509SVID{
		"a": e.ca.svid(t, idA, now.Add(-time.Minute), now.Add(time.Hour)),
		"b": e.ca.svid(t, idB, now.Add(-time.Minute), now.Add(time.Hour)),
	})

	ctx := withHeader(ctxT(t))
	raw := rawClient(t, e)
	xs, err := raw.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	xb, err := raw.FetchX509Bundles(ctx, &workloadpb.X509BundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	jb, err := raw.FetchJWTBundles(ctx, &workloadpb.JWTBundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	svidState := func() string {
		t.Helper()
		r, err := xs.Recv()
		if err != nil {
			t.Fatalf("X509-SVID stream: %v", err)
		}
		var ids []string
		for _, s := range r.Svids {
			ids = append(ids, s.SpiffeId)
		}
		return fmt.Sprintf("%s fed=%s", strings.Join(ids, ","), strings.Join(slices.Sorted(mapKeys(r.FederatedBundles)), ","))
	}
	bundleState := func() string {
		t.Helper()
		r1, err := xb.Recv()
		if err != nil {
			t.Fatalf("X.509 bundle stream: %v", err)
		}
		r2, err := jb.Recv()
		if err != nil {
			t.Fatalf("JWT bundle stream: %v", err)
		}
		return strings.Join(slices.Sorted(mapKeys(r1.Bundles)), ",") + " / " + strings.Join(slices.Sorted(mapKeys(r2.Bundles)), ",")
	}
	if got, want := svidState(), "spiffe://example.org/a,spiffe://example.org/b fed=spiffe://other.org"; got != want {
		t.Fatalf("initial X509-SVIDs: %s, want %s", got, want)
	}
	if got, want := bundleState(), "spiffe://example.org,spiffe://other.org / spiffe://example.org,spiffe://other.org"; got != want {
		t.Fatalf("initial bundles: %s, want %s", got, want)
	}

	if err := e.cache.SetEntries([]*cache.Entry{entA}); err != nil {
		t.Fatal(err)
	}
	if got, want := svidState(), "spiffe://example.org/a fed="; got != want {
		t.Fatalf("after removing b: %s, want %s", got, want)
	}
	if got, want := bundleState(), "spiffe://example.org / spiffe://example.org"; got != want {
		t.Fatalf("bundles after removing b: %s, want %s", got, want)
	}

	if err := e.cache.SetEntries(nil); err != nil {
		t.Fatal(err)
	}
	for name, recv := range map[string]func() error{
		"FetchX509SVID":    func() error { _, err := xs.Recv(); return err },
		"FetchX509Bundles": func() error { _, err := xb.Recv(); return err },
		"FetchJWTBundles":  func() error { _, err := jb.Recv(); return err },
	} {
		if err := recv(); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s with no entry left: %v, want PermissionDenied", name, err)
		}
	}
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// TestFetchJWTSVIDForeignSPIFFEID: asking for the JWT-SVID of a SPIFFE ID
// the caller does not hold, even one another workload's entry has, is
// PermissionDenied (spec 6.2.1) and mints nothing.
func TestFetchJWTSVIDForeignSPIFFEID(t *testing.T) {
	e := startEnv(t, envOpts{})
	now := e.clk.Now()
	mine, theirs := mustID(t, "/mine"), mustID(t, "/theirs")
	e.addIdentity(t, []*cache.Entry{
		entry("m", mine, now, uidSelector()),
		entry("t", theirs, now, selector.Selector{Type: "unix", Value: "uid:4242424"}),
	}, nil)
	ctx := ctxT(t)
	opt := workloadapi.WithAddr(e.addr)
	for _, id := range []spiffeid.ID{theirs, mustID(t, "/nobody"), spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString("other.org"), "/mine")} {
		_, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "svc", Subject: id}, opt)
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("JWT-SVID for %s: %v, want PermissionDenied", id, err)
		}
	}
	if n := e.minter.calls.Load(); n != 0 {
		t.Fatalf("minted %d JWT-SVIDs for refused requests", n)
	}
	s, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "svc", Subject: mine}, opt)
	if err != nil || s.ID != mine {
		t.Fatalf("own SPIFFE ID: %v, %v", s, err)
	}
}

// TestValidateJWTSVIDFederated: a JWT-SVID of a trust domain the caller's
// entry federates with validates, one of a trust domain it does not
// federate with (even one whose bundle the agent holds) is refused. Claims
// of a foreign JWT-SVID are filtered to sub, aud and exp plus those
// allowed_foreign_jwt_claims names; aud is always a list (as SPIRE). A
// caller without an identity validates JWT-SVIDs of our trust domain only
// (SPIRE serves every caller our bundle).
func TestValidateJWTSVIDFederated(t *testing.T) {
	partner := spiffeid.RequireTrustDomainFromString("partner.org")
	third := spiffeid.RequireTrustDomainFromString("third.org")
	partnerCA, thirdCA := newTestCA(t, partner), newTestCA(t, third)
	e := startEnv(t, envOpts{allowedForeignClaims: []string{"iat"}})
	for _, ca := range []*testCA{partnerCA, thirdCA} {
		if err := e.cache.SetBundle(ca.bundle(t)); err != nil {
			t.Fatal(err)
		}
	}
	now := e.clk.Now()
	me := mustID(t, "/verifier")
	en := entry("v", me, now, uidSelector())
	en.FederatesWith = []spiffeid.TrustDomain{partner}
	e.addIdentity(t, []*cache.Entry{en}, nil)

	ctx := withHeader(ctxT(t))
	raw := rawClient(t, e)
	validate := func(token string) (*workloadpb.ValidateJWTSVIDResponse, error) {
		return raw.ValidateJWTSVID(ctx, &workloadpb.ValidateJWTSVIDRequest{Audience: "svc", Svid: token})
	}
	mint := func(ca *testCA, id spiffeid.ID) string {
		t.Helper()
		tok, err := ca.mintJWT(id, []string{"svc"}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	claimNames := func(r *workloadpb.ValidateJWTSVIDResponse) string {
		return strings.Join(slices.Sorted(mapKeys(r.Claims.Fields)), ",")
	}

	// Our own trust domain: every claim, aud as a list.
	own, err := validate(mint(e.ca, mustID(t, "/peer")))
	if err != nil {
		t.Fatalf("own trust domain: %v", err)
	}
	if got := claimNames(own); got != "aud,exp,iat,sub" {
		t.Errorf("own claims %s, want aud,exp,iat,sub", got)
	}
	if l := own.Claims.Fields["aud"].GetListValue(); l == nil || len(l.Values) != 1 || l.Values[0].GetStringValue() != "svc" {
		t.Errorf("aud = %v, want [\"svc\"]", own.Claims.Fields["aud"])
	}
	// Federated: valid, claims filtered (iat allowed by configuration).
	fed, err := validate(mint(partnerCA, spiffeid.RequireFromPath(partner, "/client")))
	if err != nil {
		t.Fatalf("federated trust domain: %v", err)
	}
	if fed.SpiffeId != "spiffe://partner.org/client" || claimNames(fed) != "aud,exp,iat,sub" {
		t.Errorf("federated: %s with claims %s", fed.SpiffeId, claimNames(fed))
	}
	// Not federated with: refused, though the agent has the bundle.
	if _, err := validate(mint(thirdCA, spiffeid.RequireFromPath(third, "/client"))); status.Code(err) != codes.InvalidArgument {
		t.Errorf("trust domain not federated with: %v, want InvalidArgument", err)
	}

	// Without allowed_foreign_jwt_claims: sub, aud, exp only.
	e2 := startEnv(t, envOpts{ca: e.ca, existing: e.cache})
	raw2 := rawClient(t, e2)
	r, err := raw2.ValidateJWTSVID(ctx, &workloadpb.ValidateJWTSVIDRequest{Audience: "svc", Svid: mint(partnerCA, spiffeid.RequireFromPath(partner, "/client"))})
	if err != nil || claimNames(r) != "aud,exp,sub" {
		t.Errorf("federated without allowed claims: %v, %v", r, err)
	}

	// A caller with no identity: our trust domain only.
	if err := e.cache.SetEntries(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := validate(mint(e.ca, mustID(t, "/peer"))); err != nil {
		t.Errorf("identity-less caller, our trust domain: %v", err)
	}
	if _, err := validate(mint(partnerCA, spiffeid.RequireFromPath(partner, "/client"))); status.Code(err) != codes.InvalidArgument {
		t.Errorf("identity-less caller, federated token: %v, want InvalidArgument", err)
	}
}
