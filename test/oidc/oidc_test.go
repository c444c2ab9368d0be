// Package oidc runs sigil-oidc as a real process next to real sigil-server
// and sigil-agent processes and verifies Sigil's JWT-SVIDs the way a cloud
// IAM does: with a standard OIDC library (github.com/coreos/go-oidc)
// pointed at the provider's discovery URL, across a JWT key rotation.
package oidc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

func TestMain(m *testing.M) { os.Exit(testutil.Main(m)) }

// deadline bounds waits for things that normally take milliseconds.
const deadline = 30 * time.Second

// caTTL is the server's ca_ttl: the minimum the CA accepts, so that its
// JWT signing key rotates (a prepared key published, then activated)
// within the test.
const caTTL = time.Minute

// startProvider writes conf and runs sigil-oidc on it.
func startProvider(t *testing.T, name, conf string) *testutil.Process {
	t.Helper()
	bin := testutil.Build(t, "./cmd/sigil-oidc")[0]
	dir := testutil.ShortTempDir(t)
	path := filepath.Join(dir, "oidc-discovery-provider.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return testutil.Start(t, testutil.Command{Name: name, Path: bin, Args: []string{"-config", path}, LogPath: filepath.Join(dir, name+".log")})
}

// TestJWTSVIDVerifiesWithGoOIDC: sigil-oidc serving the trust domain's JWT
// keys from the agent's Workload API (plain HTTP on loopback, as for tests
// or behind a proxy) and another from the server API on the admin socket
// (HTTPS with a serving certificate) each let go-oidc verify a JWT-SVID
// the agent handed a workload, from nothing but the discovery URL; after
// the server rotates its JWT key, a JWT-SVID signed with the new key
// verifies too, through the same go-oidc verifiers (which fetch the keys
// again for an unknown key ID).
func TestJWTSVIDVerifiesWithGoOIDC(t *testing.T) {
	wlPort, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	issuer := fmt.Sprintf("http://localhost:%d", wlPort)
	srv := testutil.StartServer(t, testutil.ServerConfig{CATTL: caTTL, X509SVIDTTL: 20 * time.Second, JWTIssuer: issuer})
	started := time.Now()
	cfg := testutil.AgentFor(t, srv, "/agent/oidc", "")
	a := testutil.StartAgent(t, cfg)
	// One entry for this uid: the test (minting JWT-SVIDs) and the
	// provider reading the keys are both its workloads.
	workloadID := srv.ID("/workload")
	srv.Admin(t).CreateEntry(t, workloadID, srv.ID("/agent/oidc"), "unix:uid:"+strconv.Itoa(os.Getuid()))
	testutil.RequireSVID(t, a.SocketAddr(), workloadID, deadline)

	startProvider(t, "sigil-oidc-wl", fmt.Sprintf(`domains = ["localhost"]
insecure_addr = "127.0.0.1:%d"
allow_insecure_scheme = true
log_level = "DEBUG"
workload_api {
    socket_path = %q
    trust_domain = %q
}
`, wlPort, a.Config.SocketPath, srv.Config.TrustDomain))

	// The server API provider serves HTTPS; its issuer is the server's
	// jwt_issuer (what the tokens say) and its keys its own.
	tlsDir := testutil.ShortTempDir(t)
	webCA := testca.New(t, testca.Subject("web CA"))
	leaf, key := webCA.Leaf(t, testca.DNSNames("localhost"), testca.ExtKeyUsage(x509.ExtKeyUsageServerAuth))
	certPath := testca.WriteCertsPEM(t, filepath.Join(tlsDir, "cert.pem"), leaf)
	keyPath := testca.WriteKeyPEM(t, filepath.Join(tlsDir, "key.pem"), key)
	apiPort, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	apiURL := fmt.Sprintf("https://localhost:%d", apiPort)
	startProvider(t, "sigil-oidc-api", fmt.Sprintf(`domains = ["localhost"]
jwt_issuer = %q
jwks_uri = "%s/keys"
set_key_use = true
log_level = "DEBUG"
serving_cert_file {
    cert_file_path = %q
    key_file_path = %q
    addr = "127.0.0.1:%d"
}
server_api {
    address = "unix://%s"
    poll_interval = "1s"
}
`, issuer, apiURL, certPath, keyPath, apiPort, srv.Config.SocketPath))
	roots := x509.NewCertPool()
	roots.AddCert(webCA.Cert)
	webClient := &http.Client{Timeout: deadline, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}

	// What a relying party configures: the discovery URL. (The audience is
	// checked below, so that these same verifiers serve every token.)
	wlVerify := verifier(t, issuer, nil, issuer)
	apiVerify := verifier(t, apiURL, webClient, issuer)
	verifiers := map[string]*gooidc.IDTokenVerifier{"workload API provider": wlVerify, "server API provider": apiVerify}
	verify := func(token, audience string) {
		t.Helper()
		for name, v := range verifiers {
			tok, err := v.Verify(context.Background(), token)
			if err != nil {
				t.Fatalf("%s: go-oidc refused a JWT-SVID of the agent (key %q): %v", name, kid(t, token), err)
			}
			if tok.Subject != workloadID.String() || tok.Issuer != issuer || len(tok.Audience) != 1 || tok.Audience[0] != audience {
				t.Fatalf("%s: verified subject %q issuer %q audience %q, want %s %s %s", name, tok.Subject, tok.Issuer, tok.Audience, workloadID, issuer, audience)
			}
		}
	}

	first := mintJWT(t, a.SocketAddr(), "relying-party")
	verify(first, "relying-party")
	// A relying party of another audience refuses it.
	p, err := gooidc.NewProvider(context.Background(), issuer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Verifier(&gooidc.Config{ClientID: "someone-else"}).Verify(context.Background(), first); err == nil {
		t.Fatal("go-oidc accepted a JWT-SVID for another audience")
	}

	// The server rotates its JWT key within its 1-minute CA lifetime:
	// mint (a fresh audience each time, past the agent's JWT cache) until
	// a token is signed with a new key; the verifiers built before the
	// rotation verify it (go-oidc fetches the keys again for an unknown
	// key ID, as cloud IAMs do).
	firstKID := kid(t, first)
	for i := 0; ; i++ {
		if time.Since(started) > 4*caTTL {
			t.Fatalf("no JWT-SVID signed with a key other than %q within %s of the server's start", firstKID, 4*caTTL)
		}
		aud := fmt.Sprintf("relying-party-%d", i)
		tok := mintJWT(t, a.SocketAddr(), aud)
		if kid(t, tok) != firstKID {
			verify(tok, aud)
			break
		}
		time.Sleep(time.Second)
	}
}

// verifier is a go-oidc verifier of the provider whose discovery document
// is at base, for tokens of issuer: base itself for a provider whose
// issuer is its own URL (the usual case, checked strictly), else the
// provider's jwt_issuer. Audiences are checked by the caller.
func verifier(t *testing.T, base string, client *http.Client, issuer string) *gooidc.IDTokenVerifier {
	t.Helper()
	ctx := context.Background()
	if client != nil {
		ctx = gooidc.ClientContext(ctx, client)
	}
	if issuer != base {
		ctx = gooidc.InsecureIssuerURLContext(ctx, issuer)
	}
	var p *gooidc.Provider
	var last error
	// The provider process may still be starting.
	if err := testutil.Poll(deadline, 100*time.Millisecond, func() (bool, error) {
		p, last = gooidc.NewProvider(ctx, base)
		return last == nil, nil
	}); err != nil {
		t.Fatalf("go-oidc discovery at %s: %v (%v)", base, err, last)
	}
	var doc struct {
		Issuer string `json:"issuer"`
	}
	if err := p.Claims(&doc); err != nil || doc.Issuer != issuer {
		t.Fatalf("discovery document of %s: issuer %q (%v), want %q", base, doc.Issuer, err, issuer)
	}
	return p.Verifier(&gooidc.Config{SkipClientIDCheck: true})
}

// mintJWT fetches a JWT-SVID for audience from the agent, as a workload.
func mintJWT(t *testing.T, addr, audience string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	svid, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience}, workloadapi.WithAddr(addr))
	if err != nil {
		t.Fatalf("FetchJWTSVID(%s): %v", audience, err)
	}
	return svid.Marshal()
}

func kid(t *testing.T, token string) string {
	t.Helper()
	jws, err := jose.ParseSignedCompact(token, []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.RS256})
	if err != nil {
		t.Fatal(err)
	}
	return jws.Signatures[0].Header.KeyID
}
