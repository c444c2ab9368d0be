package nested

import (
	"context"
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// siteCATTL is the site server's ca_ttl: the minimum the CA accepts, so
// that its intermediate is due for renewal (at half-life) within the test.
const siteCATTL = time.Minute

// verifyX509 checks svid's chain (leaf <- site intermediate) against the
// ROOT server's bundle and returns the intermediate.
func verifyX509(t *testing.T, svid *x509svid.SVID, rootBundle *x509bundle.Bundle, want spiffeid.ID) *x509.Certificate {
	t.Helper()
	id, chains, err := x509svid.Verify(svid.Certificates, rootBundle)
	if err != nil {
		t.Fatalf("X509-SVID %s does not verify against the root server's bundle: %v", svid.ID, err)
	}
	if id != want {
		t.Fatalf("X509-SVID for %s, want %s", id, want)
	}
	if len(svid.Certificates) != 2 {
		t.Fatalf("X509-SVID chain has %d certificates, want leaf + site intermediate", len(svid.Certificates))
	}
	inter := svid.Certificates[1]
	if !inter.IsCA || len(inter.URIs) != 1 || inter.URIs[0].String() != TrustDomain.IDString() {
		t.Fatalf("chain[1] is not the site's intermediate CA (IsCA=%v, URIs=%v)", inter.IsCA, inter.URIs)
	}
	if path := chains[0]; len(path) != 3 || !rootBundle.HasX509Authority(path[2]) {
		t.Fatalf("verified path of %d certificates does not end at a root authority", len(path))
	}
	return inter
}

func verifyJWT(t *testing.T, ctx context.Context, agent *Agent, rootJWT *jwtbundle.Bundle, want spiffeid.ID) {
	t.Helper()
	const aud = "nested-test"
	var tok *jwtsvid.SVID
	var err error
	for {
		tok, err = workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud}, workloadapi.WithAddr(agent.Addr()))
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("%s: fetch JWT-SVID: %v", agent.Name, err)
	}
	got, err := jwtsvid.ParseAndValidate(tok.Marshal(), rootJWT, []string{aud})
	if err != nil {
		t.Fatalf("JWT-SVID from %s does not validate against the root server's JWT bundle: %v", agent.Name, err)
	}
	if got.ID != want {
		t.Fatalf("JWT-SVID for %s, want %s", got.ID, want)
	}
}

// TestThreeTiers: root server -> root-side agent co-located with the site
// server -> site server (UpstreamAuthority "spire" over that agent's
// Workload API) -> device agent -> workload. The workload's SVIDs verify
// against the ROOT's bundles. With the root stopped the site keeps
// attesting agents and signing; once the root is back (same data and port)
// the site renews its intermediate on its own.
func TestThreeTiers(t *testing.T) {
	if testing.Short() {
		t.Skip("about a minute of real time: the site's intermediate must come due")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir := testutil.ShortTempDir(t)

	// Tier 1: the root, self-signed.
	rootCfg := NewServerConfig(filepath.Join(dir, "root"), 0)
	root := StartServer(t, "root", rootCfg)

	// The root-side agent next to the site server; the site server's
	// identity is a downstream entry under it.
	gw := StartAgent(t, ctx, "root-agent", filepath.Join(dir, "ra"), root, "/site-gw")
	if err := root.CreateEntry(ctx, "/site-server", "/site-gw", true); err != nil {
		t.Fatal(err)
	}
	siteID := spiffeid.RequireFromPath(TrustDomain, "/site-server")
	if _, err := gw.FetchX509SVID(ctx, func(s *x509svid.SVID) bool { return s.ID == siteID }); err != nil {
		t.Fatal(err)
	}

	// Tier 2: the site server, nested under the root.
	siteCfg := NewServerConfig(filepath.Join(dir, "site"), 0, func(c *config.Server) {
		c.CATTL = siteCATTL
		// Lifetimes well above the CA's 10s backdating, so that agents do
		// not renew at once (their half-life counts from NotBefore).
		c.DefaultX509SVIDTTL = 20 * time.Second
		c.AgentTTL = 30 * time.Second
		c.DefaultJWTSVIDTTL = 20 * time.Second
		c.SetPlugin(config.NewPlugin("UpstreamAuthority", "spire", map[string]any{"server_address": "127.0.0.1", "server_port": rootCfg.BindPort, "workload_api_socket": gw.Socket}))
	})
	site := StartServer(t, "site", siteCfg)
	siteStarted := time.Now()

	// Tier 3: a device agent attested to the site, and its workload.
	dev1 := StartAgent(t, ctx, "device-1", filepath.Join(dir, "d1"), site, "/device-1")
	if err := site.CreateEntry(ctx, "/workload-1", "/device-1", false); err != nil {
		t.Fatal(err)
	}
	wl1 := spiffeid.RequireFromPath(TrustDomain, "/workload-1")
	svid, err := dev1.FetchX509SVID(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	rootX, rootJ, err := root.Bundle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	inter1 := verifyX509(t, svid, rootX, wl1)
	verifyJWT(t, ctx, dev1, rootJ, wl1)
	// The site's bundle carries the root's JWT keys (from
	// PublishJWTAuthority): JWT-SVIDs of the root validate at the site.
	_, siteJ, err := site.Bundle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for kid := range rootJ.JWTAuthorities() {
		if !siteJ.HasJWTAuthority(kid) {
			t.Fatalf("root JWT key %q missing from the site's bundle", kid)
		}
	}
	rootKeys := len(rootJ.JWTAuthorities())

	// Cut the site off: stop the root. Wait until the site's CA has tried,
	// and failed, to get its next intermediate.
	if time.Since(siteStarted) > siteCATTL/3 {
		// The next intermediate (due at half-life) may already have been
		// obtained: the offline rotation below would not be exercised.
		t.Fatalf("setup took %s: too slow for a %s site ca_ttl", time.Since(siteStarted), siteCATTL)
	}
	failed := site.Log.Wait("CA rotation pass failed")
	root.Stop()
	select {
	case <-failed:
	case <-ctx.Done():
		t.Fatal("the site never attempted its due CA rotation")
	}
	// Still offline, with its rotation overdue: the site attests a new
	// device agent and signs SVIDs under its current intermediate.
	dev2 := StartAgent(t, ctx, "device-2", filepath.Join(dir, "d2"), site, "/device-2")
	if err := site.CreateEntry(ctx, "/workload-2", "/device-2", false); err != nil {
		t.Fatal(err)
	}
	wl2 := spiffeid.RequireFromPath(TrustDomain, "/workload-2")
	svid2, err := dev2.FetchX509SVID(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := verifyX509(t, svid2, rootX, wl2); !got.Equal(inter1) {
		t.Fatal("offline: SVID not signed under the site's current intermediate")
	}
	verifyJWT(t, ctx, dev2, rootJ, wl2)

	// The root comes back on the same data dir and port: the site gets a
	// new intermediate and publishes its next JWT key, with no manual step.
	root = StartServer(t, "root-restarted", rootCfg)
	svid3, err := dev1.FetchX509SVID(ctx, func(s *x509svid.SVID) bool { return !s.Certificates[len(s.Certificates)-1].Equal(inter1) })
	if err != nil {
		t.Fatalf("the site did not renew its intermediate after the root came back: %v", err)
	}
	rootX, rootJ, err = root.Bundle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	inter2 := verifyX509(t, svid3, rootX, wl1)
	if !inter2.NotAfter.After(inter1.NotAfter) {
		t.Fatalf("new intermediate expires %s, not after the old one (%s)", inter2.NotAfter, inter1.NotAfter)
	}
	if got := len(rootJ.JWTAuthorities()); got <= rootKeys {
		t.Fatalf("root bundle has %d JWT keys, want more than %d (the site's next key)", got, rootKeys)
	}
	verifyJWT(t, ctx, dev1, rootJ, wl1)
	verifyJWT(t, ctx, dev2, rootJ, wl2)
}
