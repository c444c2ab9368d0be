package interop

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// TestOIDCProviderForSPIRE: sigil-oidc, configured as SPIRE's
// oidc-discovery-provider would be, serves a spire-server's JWT keys, from
// a spire-agent's Workload API and from the spire-server's bundle API on
// its admin socket; go-oidc, given only a provider's discovery URL,
// verifies a JWT-SVID the spire-agent handed a workload (issuer the
// server's jwt_issuer), and refuses one for another audience.
func TestOIDCProviderForSPIRE(t *testing.T) {
	testutil.SPIREBinaries(t)
	wlPort, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	apiPort, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	issuer := fmt.Sprintf("http://localhost:%d", wlPort)
	spire := testutil.StartSPIREServer(t, testutil.ServerConfig{JWTIssuer: issuer})
	agent := testutil.StartSPIREAgent(t, testutil.AgentFor(t, spire, "/node", ""))
	app := spire.ID("/app")
	spire.Admin(t).CreateEntry(t, app, spire.ID("/node"), uidSelector)
	testutil.RequireSVID(t, agent.SocketAddr(), app, deadline)

	bin := testutil.Build(t, "./cmd/sigil-oidc")[0]
	provider := func(name, conf string) {
		dir := testutil.ShortTempDir(t)
		path := filepath.Join(dir, "oidc-discovery-provider.conf")
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		testutil.Start(t, testutil.Command{Name: name, Path: bin, Args: []string{"-config", path}, LogPath: filepath.Join(dir, name+".log")})
	}
	provider("sigil-oidc-workload-api", fmt.Sprintf(`domains = ["localhost"]
insecure_addr = "127.0.0.1:%d"
allow_insecure_scheme = true
workload_api {
    socket_path = %q
    trust_domain = %q
}
`, wlPort, agent.Config.SocketPath, spire.Config.TrustDomain))
	provider("sigil-oidc-server-api", fmt.Sprintf(`domains = ["localhost"]
insecure_addr = "127.0.0.1:%d"
allow_insecure_scheme = true
jwt_issuer = %q
server_api {
    address = "unix://%s"
    poll_interval = "1s"
}
`, apiPort, issuer, spire.Config.SocketPath))

	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	token, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "relying-party"}, workloadapi.WithAddr(agent.SocketAddr()))
	if err != nil {
		t.Fatalf("spire-agent JWT-SVID: %v", err)
	}
	for _, base := range []string{issuer, fmt.Sprintf("http://localhost:%d", apiPort)} {
		pctx := ctx
		if base != issuer {
			pctx = gooidc.InsecureIssuerURLContext(ctx, issuer)
		}
		var p *gooidc.Provider
		var last error
		// The provider may still be starting or reading its first keys.
		if err := testutil.Poll(deadline, 100*time.Millisecond, func() (bool, error) {
			if p, last = gooidc.NewProvider(pctx, base); last != nil {
				return false, nil
			}
			_, last = p.Verifier(&gooidc.Config{ClientID: "relying-party"}).Verify(ctx, token.Marshal())
			return last == nil, nil
		}); err != nil {
			t.Fatalf("go-oidc through sigil-oidc at %s: a spire-agent JWT-SVID does not verify: %v (last: %v)", base, err, last)
		}
		got, _ := p.Verifier(&gooidc.Config{ClientID: "relying-party"}).Verify(ctx, token.Marshal())
		if got.Subject != app.String() || got.Issuer != issuer {
			t.Fatalf("go-oidc through %s verified subject %q issuer %q, want %s %s", base, got.Subject, got.Issuer, app, issuer)
		}
		if _, err := p.Verifier(&gooidc.Config{ClientID: "someone-else"}).Verify(ctx, token.Marshal()); err == nil {
			t.Fatalf("go-oidc through %s accepted a JWT-SVID for another audience", base)
		}
	}
}
