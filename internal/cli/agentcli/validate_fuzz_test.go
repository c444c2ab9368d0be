package agentcli

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
)

const fuzzKID = "k1"

// fuzzJWTKey returns a fixed key: the bundle's JWT key ("bundle"), so that
// the committed seed tokens (valid until 2100) stay valid, or another.
func fuzzJWTKey(tb testing.TB, name string) *ecdsa.PrivateKey {
	d := sha256.Sum256([]byte("sigil fuzz agentcli jwt " + name))
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d[:])
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// startFuzzWorkloadAPI runs Sigil's Workload API on a real socket with an
// identity for this process and a bundle holding fuzzJWTKey, and returns
// the socket path.
func startFuzzWorkloadAPI(f *testing.F) string {
	p := newPKI(f)
	b := spiffebundle.FromX509Authorities(td, []*x509.Certificate{p.ca})
	if err := b.AddJWTAuthority(fuzzKID, fuzzJWTKey(f, "bundle").Public()); err != nil {
		f.Fatal(err)
	}
	return startWorkloadAPI(f, p, b)
}

func fuzzToken(tb testing.TB, key *ecdsa.PrivateKey, kid string, claims map[string]any) string {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		tb.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// validateSeeds are FuzzAPIValidateJWT's seeds (token, audience).
func validateSeeds(tb testing.TB) [][2]string {
	key, stranger := fuzzJWTKey(tb, "bundle"), fuzzJWTKey(tb, "stranger")
	exp := time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	valid := map[string]any{"sub": webID.String(), "aud": []string{"db"}, "exp": exp}
	good := fuzzToken(tb, key, fuzzKID, valid)
	return [][2]string{
		{good, "db"},
		{good, "other"},
		{good, "-db"},
		{good, ""},
		{fuzzToken(tb, key, fuzzKID, map[string]any{"sub": webID.String(), "aud": "db", "exp": exp, "x": map[string]any{"y": []any{1.5, "z", nil}}}), "db"},
		{fuzzToken(tb, key, fuzzKID, map[string]any{"sub": webID.String(), "aud": []string{"db"}, "exp": 946684800}), "db"},
		{fuzzToken(tb, key, "k2", valid), "db"},
		{fuzzToken(tb, stranger, fuzzKID, valid), "db"},
		{"-svid", "db"},
		{"x.y.z", "db"},
		{"", "db"},
		{strings.Repeat("a.", 3000), strings.Repeat("b", 3000)},
	}
}

// FuzzAPIValidateJWT runs `api validate jwt -svid <token> -audience <aud>`
// (pretty or JSON output) against Sigil's own Workload API with arbitrary
// tokens and audiences: the command never panics; it says a token is
// valid (exit 0, and the SPIFFE ID it names) only for one that verifies
// with the bundle's JWT key, is unexpired and for the audience; otherwise
// it exits 1 with nothing on stdout and a short message on stderr.
func FuzzAPIValidateJWT(f *testing.F) {
	socket := startFuzzWorkloadAPI(f)
	pub := fuzzJWTKey(f, "bundle").Public()
	for _, s := range validateSeeds(f) {
		f.Add(s[0], s[1], false)
		f.Add(s[0], s[1], true)
	}
	f.Fuzz(func(t *testing.T, token, audience string, jsonOut bool) {
		args := []string{"api", "validate", "jwt", "-svid", token, "-audience", audience, "-socketPath", socket}
		if jsonOut {
			args = append(args, "-output", "json")
		}
		var out, errOut bytes.Buffer
		code := Run(context.Background(), args, &out, &errOut)
		if code != 0 {
			if code != 1 || out.Len() != 0 {
				t.Fatalf("exit %d, stdout %q", code, out.String())
			}
			if errOut.Len() > 1024 {
				t.Fatalf("stderr of %d bytes: %.300s...", errOut.Len(), errOut.String())
			}
			return
		}
		var id string
		if jsonOut {
			var resp struct {
				SpiffeID string `json:"spiffe_id"`
			}
			if err := json.Unmarshal(out.Bytes(), &resp); err != nil {
				t.Fatalf("JSON output %q: %v", out.String(), err)
			}
			id = resp.SpiffeID
		} else {
			first, _, _ := strings.Cut(out.String(), "\nClaims")
			var ok bool
			id, ok = strings.CutPrefix(first, "SVID is valid.\nSPIFFE ID : ")
			if !ok {
				t.Fatalf("exit 0 with output %q", out.String())
			}
		}
		tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.ES512, jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512})
		if err != nil {
			t.Fatalf("said valid: a token go-jose cannot parse: %v", err)
		}
		var claims jwt.Claims
		if err := tok.Claims(pub, &claims); err != nil {
			t.Fatalf("said valid: a token not signed by the bundle's key: %v", err)
		}
		if claims.Subject != id || id != webID.String() {
			t.Fatalf("said valid for %q: a token for %q", id, claims.Subject)
		}
		if claims.Expiry == nil || !time.Now().Before(claims.Expiry.Time()) || !slices.Contains([]string(claims.Audience), audience) {
			t.Fatalf("said valid: a token expiring %v for %q, asked %q", claims.Expiry, claims.Audience, audience)
		}
	})
}
