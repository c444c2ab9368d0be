package workloadapi_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// The JWT fuzz targets validate tokens against two bundles: our trust
// domain's and a federated one, whose JWT keys are fixed (so that the
// tokens of the committed seed files stay valid, until 2100) and share one
// key ID (so that a key must be looked up in the subject's trust domain).
const (
	fuzzKID      = "jwt-example.org"
	fuzzAudience = "fuzz-aud"
)

var (
	fuzzFedTD  = spiffeid.RequireTrustDomainFromString("partner.test")
	fuzzSub    = "spiffe://example.org/fuzz"
	fuzzFedSub = "spiffe://partner.test/peer"
	fuzzExp    = time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
)

func fuzzKey(tb testing.TB, name string) *ecdsa.PrivateKey {
	d := sha256.Sum256([]byte("sigil fuzz jwt " + name))
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d[:])
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// jwtFuzzEnv is a Workload API server on a real socket, serving an
// identity (federated with partner.test) to this process, and a client.
type jwtFuzzEnv struct {
	raw  workloadpb.SpiffeWorkloadAPIClient
	keys map[spiffeid.TrustDomain]crypto.PublicKey // the JWT key of each bundle
}

func startJWTFuzzEnv(f *testing.F) *jwtFuzzEnv {
	ca := newTestCA(f, td)
	ca.jwt = &testca.JWTKey{ID: fuzzKID, Key: fuzzKey(f, td.Name())}
	// Nothing may log through f once fuzzing runs: the cache and the
	// server log nowhere.
	clk := clock.NewFake(time.Now())
	c := cache.New(cache.Config{TrustDomain: td, Clock: clk})
	if err := c.SetBundle(ca.bundle(f)); err != nil {
		f.Fatal(err)
	}
	e := startEnv(f, envOpts{ca: ca, clk: clk, existing: c, log: slog.New(slog.DiscardHandler)})
	fedKey := fuzzKey(f, fuzzFedTD.Name())
	fed := spiffebundle.FromX509Authorities(fuzzFedTD, []*x509.Certificate{newTestCA(f, fuzzFedTD).Cert})
	if err := fed.AddJWTAuthority(fuzzKID, fedKey.Public()); err != nil {
		f.Fatal(err)
	}
	if err := e.cache.SetBundle(fed); err != nil {
		f.Fatal(err)
	}
	now := e.clk.Now()
	id := mustID(f, "/fuzz")
	ent := entry("fuzz", id, now, uidSelector())
	ent.FederatesWith = []spiffeid.TrustDomain{fuzzFedTD}
	e.addIdentity(f, []*cache.Entry{ent}, map[string]*cache.X509SVID{"fuzz": ca.svid(f, id, now.Add(-time.Minute), now.Add(time.Hour))})
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { conn.Close() })
	return &jwtFuzzEnv{
		raw:  workloadpb.NewSpiffeWorkloadAPIClient(conn),
		keys: map[spiffeid.TrustDomain]crypto.PublicKey{td: ca.jwt.Key.Public(), fuzzFedTD: fedKey.Public()},
	}
}

// validate asks the Workload API to validate token for audience and checks
// the answer: a refusal is InvalidArgument with a short message; an
// acceptance is for a token that independently verifies with the JWT key of
// its subject's trust domain, is unexpired and names audience.
func (e *jwtFuzzEnv) validate(t *testing.T, token, audience string) {
	t.Helper()
	if !utf8.ValidString(token) || !utf8.ValidString(audience) {
		return // not representable as a protobuf string: no client can send it
	}
	ctx, cancel := context.WithTimeout(withHeader(context.Background()), time.Minute)
	defer cancel()
	resp, err := e.raw.ValidateJWTSVID(ctx, &workloadpb.ValidateJWTSVIDRequest{Svid: token, Audience: audience})
	if err != nil {
		st := status.Convert(err)
		if st.Code() != codes.InvalidArgument {
			t.Fatalf("ValidateJWTSVID: %v, want InvalidArgument", err)
		}
		if len(st.Message()) > 1024 {
			t.Fatalf("ValidateJWTSVID: message of %d bytes: %.300s...", len(st.Message()), st.Message())
		}
		return
	}
	id, err := spiffeid.FromString(resp.SpiffeId)
	if err != nil {
		t.Fatalf("accepted a token for %q: %v", resp.SpiffeId, err)
	}
	key, ok := e.keys[id.TrustDomain()]
	if !ok {
		t.Fatalf("accepted a token of trust domain %q, which has no bundle", id.TrustDomain())
	}
	algs := []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.ES512, jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512}
	tok, err := jwt.ParseSigned(token, algs)
	if err != nil {
		t.Fatalf("accepted a token go-jose cannot parse: %v", err)
	}
	var claims jwt.Claims
	if err := tok.Claims(key, &claims); err != nil {
		t.Fatalf("accepted a token not signed by the JWT key of %q: %v", id.TrustDomain(), err)
	}
	if claims.Subject != resp.SpiffeId || resp.Claims.GetFields()["sub"].GetStringValue() != resp.SpiffeId {
		t.Fatalf("accepted a token for %q, answered %q (claims %v)", claims.Subject, resp.SpiffeId, resp.Claims)
	}
	if claims.Expiry == nil || !time.Now().Before(claims.Expiry.Time()) {
		t.Fatalf("accepted a token without a future exp: %v", claims.Expiry)
	}
	if !slices.Contains([]string(claims.Audience), audience) {
		t.Fatalf("accepted a token for audience %q, asked %q", claims.Audience, audience)
	}
}

// signJWS builds a compact JWS of header and payload (raw JSON text),
// signed with ES256 by key; a nil key leaves the signature empty.
func signJWS(tb testing.TB, header, payload string, key *ecdsa.PrivateKey) string {
	enc := base64.RawURLEncoding
	input := enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(payload))
	if key == nil {
		return input + "."
	}
	digest := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		tb.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + enc.EncodeToString(sig)
}

func claimsJSON(tb testing.TB, claims map[string]any) string {
	b, err := json.Marshal(claims)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

const fuzzHeader = `{"alg":"ES256","kid":"` + fuzzKID + `","typ":"JWT"}`

// jwtSeeds are FuzzValidateJWTSVID's seeds: tokens signed by each bundle's
// key, a stranger's, none; expired, for other audiences or subjects, with
// odd headers and claims, and inputs that make long error messages.
func jwtSeeds(tb testing.TB) [][2]string {
	ours, theirs, stranger := fuzzKey(tb, td.Name()), fuzzKey(tb, fuzzFedTD.Name()), fuzzKey(tb, "stranger")
	valid := map[string]any{"sub": fuzzSub, "aud": []string{fuzzAudience}, "exp": fuzzExp, "iat": 1735689600}
	with := func(k string, v any) string {
		c := map[string]any{}
		for k, v := range valid {
			c[k] = v
		}
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return claimsJSON(tb, c)
	}
	good := signJWS(tb, fuzzHeader, claimsJSON(tb, valid), ours)
	return [][2]string{
		{good, fuzzAudience},
		{good, "other-aud"},
		{good, strings.Repeat("a", 4096)},
		{signJWS(tb, fuzzHeader, with("sub", fuzzFedSub), theirs), fuzzAudience},
		{signJWS(tb, fuzzHeader, with("sub", fuzzFedSub), ours), fuzzAudience},
		{signJWS(tb, fuzzHeader, claimsJSON(tb, valid), theirs), fuzzAudience},
		{signJWS(tb, fuzzHeader, claimsJSON(tb, valid), stranger), fuzzAudience},
		{signJWS(tb, fuzzHeader, with("sub", "spiffe://other.org/x"), ours), fuzzAudience},
		{signJWS(tb, fuzzHeader, with("exp", 946684800), ours), fuzzAudience},
		{signJWS(tb, fuzzHeader, with("exp", nil), ours), fuzzAudience},
		{signJWS(tb, fuzzHeader, with("aud", fuzzAudience), ours), fuzzAudience},
		{signJWS(tb, fuzzHeader, with("extra", map[string]any{"n": 1e300, "l": []any{1, "a", nil, true}}), ours), fuzzAudience},
		{signJWS(tb, `{"alg":"ES256","typ":"JWT"}`, claimsJSON(tb, valid), ours), fuzzAudience},
		{signJWS(tb, `{"alg":"ES256","kid":"`+strings.Repeat("k", 4096)+`"}`, claimsJSON(tb, valid), ours), fuzzAudience},
		{signJWS(tb, `{"alg":"ES256","kid":"`+fuzzKID+`","typ":"JWS"}`, claimsJSON(tb, valid), ours), fuzzAudience},
		{signJWS(tb, `{"alg":"none"}`, claimsJSON(tb, valid), nil), fuzzAudience},
		{signJWS(tb, `{"alg":"HS256","kid":"`+fuzzKID+`"}`, claimsJSON(tb, valid), ours), fuzzAudience},
		{signJWS(tb, fuzzHeader, with("sub", "spiffe://example.org/"+strings.Repeat("p", 4096)), stranger), fuzzAudience},
		{"x.y.z", fuzzAudience},
		{"...", fuzzAudience},
		{"", fuzzAudience},
		{good, ""},
	}
}

// FuzzValidateJWTSVID sends arbitrary tokens and audiences to the Workload
// API's ValidateJWTSVID, as a workload may: the agent never panics, refuses
// with InvalidArgument and a short message, and accepts only tokens signed
// by the JWT key of their subject's trust domain, unexpired, for the
// audience (see validate).
func FuzzValidateJWTSVID(f *testing.F) {
	env := startJWTFuzzEnv(f)
	for _, s := range jwtSeeds(f) {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, token, audience string) {
		env.validate(t, token, audience)
	})
}

type partsSeed struct {
	header, payload string
	signer          uint8
}

// partsSeeds are FuzzValidateJWTSVIDParts's seeds: valid claims signed
// by each key, and odd claims and headers signed by ours.
func partsSeeds(tb testing.TB) []partsSeed {
	claims := func(sub string, aud any, exp any, extra string) string {
		c := map[string]any{"sub": sub, "aud": aud, "exp": exp}
		s := claimsJSON(tb, c)
		if extra != "" {
			s = s[:len(s)-1] + "," + extra + "}"
		}
		return s
	}
	return []partsSeed{
		{fuzzHeader, claims(fuzzSub, []string{fuzzAudience}, fuzzExp, ""), 0},
		{fuzzHeader, claims(fuzzSub, fuzzAudience, fuzzExp, `"iat":1735689600,"nbf":1735689600`), 0},
		{fuzzHeader, claims(fuzzFedSub, []string{fuzzAudience, "b"}, fuzzExp, ""), 1},
		{fuzzHeader, claims(fuzzSub, []string{fuzzAudience}, fuzzExp, ""), 1},
		{fuzzHeader, claims(fuzzSub, []string{fuzzAudience}, fuzzExp, ""), 2},
		{fuzzHeader, claims(fuzzSub, []string{fuzzAudience}, fuzzExp, ""), 3},
		{fuzzHeader, claims(fuzzSub, []string{fuzzAudience}, 1.5e300, ""), 0},
		{fuzzHeader, claims(fuzzSub, []string{fuzzAudience}, fuzzExp, `"x":{"y":[1,2,{"z":null}]},"big":123456789012345678901234567890,"s":"\u0000\ud800"`), 0},
		{fuzzHeader, claims(fuzzSub, []string{fuzzAudience}, fuzzExp, `"sub":"spiffe://partner.test/dup"`), 0},
		{fuzzHeader, claims(fuzzSub, []string{fuzzAudience}, "4102444800", ""), 0},
		{`{"alg":"ES256","kid":"` + fuzzKID + `","crit":["exp"]}`, claims(fuzzSub, []string{fuzzAudience}, fuzzExp, ""), 0},
		{`{"alg":"ES256","kid":"` + fuzzKID + `","jwk":{"kty":"EC"}}`, claims(fuzzSub, []string{fuzzAudience}, fuzzExp, ""), 0},
		{`{"alg":"none","kid":"` + fuzzKID + `"}`, claims(fuzzSub, []string{fuzzAudience}, fuzzExp, ""), 3},
		{`[]`, `[]`, 0},
	}
}

// FuzzValidateJWTSVIDParts builds tokens from an arbitrary header and
// payload, signed with ES256 by our trust domain's JWT key (signer 0), the
// federated one's (1), a stranger's (2) or not at all (3), so that the
// fuzzer reaches the claims of correctly signed tokens; the checks are
// FuzzValidateJWTSVID's.
func FuzzValidateJWTSVIDParts(f *testing.F) {
	env := startJWTFuzzEnv(f)
	signers := []*ecdsa.PrivateKey{fuzzKey(f, td.Name()), fuzzKey(f, fuzzFedTD.Name()), fuzzKey(f, "stranger"), nil}
	for _, s := range partsSeeds(f) {
		f.Add(s.header, s.payload, s.signer)
	}
	f.Fuzz(func(t *testing.T, header, payload string, signer uint8) {
		env.validate(t, signJWS(t, header, payload, signers[int(signer)%len(signers)]), fuzzAudience)
	})
}
