package upstreamspire_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/adminclient"
	agentapp "github.com/sigil-spiffe/sigil/internal/app/agent"
	serverapp "github.com/sigil-spiffe/sigil/internal/app/server"
	"github.com/sigil-spiffe/sigil/internal/ca"
	"github.com/sigil-spiffe/sigil/internal/ca/upstreamspire"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/inproc"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func TestNewValidates(t *testing.T) {
	good := upstreamspire.Config{TrustDomain: td, ServerAddress: "127.0.0.1", ServerPort: 8081, WorkloadAPISocket: "/x/agent.sock"}
	if _, err := upstreamspire.New(good); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, edit := range map[string]func(*upstreamspire.Config){
		"no trust domain": func(c *upstreamspire.Config) { c.TrustDomain = spiffeid.TrustDomain{} },
		"no address":      func(c *upstreamspire.Config) { c.ServerAddress = "" },
		"port 0":          func(c *upstreamspire.Config) { c.ServerPort = 0 },
		"port too big":    func(c *upstreamspire.Config) { c.ServerPort = 70000 },
		"no socket":       func(c *upstreamspire.Config) { c.WorkloadAPISocket = "" },
		"negative poll":   func(c *upstreamspire.Config) { c.PollInterval = -time.Second },
	} {
		c := good
		edit(&c)
		if _, err := upstreamspire.New(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// Construction needs nothing reachable; calls fail (not hang) while the
// agent's Workload API is missing.
func TestLazyAndBounded(t *testing.T) {
	port, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	a, err := upstreamspire.New(upstreamspire.Config{
		TrustDomain: td, ServerAddress: "127.0.0.1", ServerPort: port,
		WorkloadAPISocket: filepath.Join(t.TempDir(), "missing.sock"), CallTimeout: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	_, _, err = a.MintX509CA(context.Background(), csr(t), time.Hour)
	if err == nil || !strings.Contains(err.Error(), "Workload API") {
		t.Fatalf("MintX509CA without an agent: %v, want a Workload API error", err)
	}
	if _, err := a.PublishJWTAuthority(context.Background(), datastore.JWTKey{KeyID: "k"}); err == nil {
		t.Fatal("PublishJWTAuthority without an agent succeeded")
	}
}

func csr(t *testing.T) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{td.ID().URL()}}, k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestAgainstRealUpstream runs the authority against a real root server
// and a real agent serving the downstream entry's SVID: minting, JWT
// publication, bundle watching, failure while the root is down and
// recovery once it is back.
func TestAgainstRealUpstream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := testutil.ShortTempDir(t)
	rootCfg := inproc.ServerConfig(td, filepath.Join(dir, "root"), filepath.Join(dir, "root.sock"), 0)
	root := inproc.RunServer(t, rootCfg, nil, serverapp.Options{})
	rootCfg.BindPort = root.Port() // the restart below listens on the same port
	gwID, downID := spiffeid.RequireFromPath(td, "/gw"), spiffeid.RequireFromPath(td, "/down")
	gw := root.StartAgent(t, filepath.Join(dir, "a"), gwID, nil, agentapp.Options{})
	down, err := adminclient.NewEntry(downID, gwID, "unix:uid:"+strconv.Itoa(os.Getuid()))
	if err != nil {
		t.Fatal(err)
	}
	down.Downstream = true
	root.Admin(t).CreateEntries(t, down)
	testutil.RequireSVID(t, gw.SocketAddr(), downID, time.Minute)
	rootBundle := func() *spiffebundle.Bundle {
		t.Helper()
		b, err := root.Admin(t).Client.SPIFFEBundle(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}

	a, err := upstreamspire.New(upstreamspire.Config{
		TrustDomain: td, ServerAddress: "127.0.0.1", ServerPort: rootCfg.BindPort,
		WorkloadAPISocket: gw.Cfg.SocketPath, PollInterval: 100 * time.Millisecond, CallTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()

	// Mint: the chain verifies against the returned roots, which are the
	// root server's bundle; the TTL follows the preferred TTL.
	chain, roots, err := a.MintX509CA(ctx, csr(t), 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	rootX := rootBundle()
	if len(roots) != len(rootX.X509Authorities()) || !rootX.HasX509Authority(roots[0]) {
		t.Fatal("returned roots are not the root server's X.509 authorities")
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("minted CA does not verify against the roots: %v", err)
	}
	if life := time.Until(chain[0].NotAfter); life > 10*time.Minute || life < 9*time.Minute {
		t.Fatalf("minted CA lives %s, want about the preferred 10m", life)
	}

	// Publish a JWT key: it is in the answer and in the root's bundle.
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	keys, err := a.PublishJWTAuthority(ctx, datastore.JWTKey{KeyID: "site-key", PublicKey: pub, ExpiresAt: time.Now().Add(time.Hour).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, k := range keys {
		found = found || k.KeyID == "site-key"
	}
	rootJ := rootBundle()
	if !found || !rootJ.HasJWTAuthority("site-key") || len(keys) != len(rootJ.JWTAuthorities()) {
		t.Fatalf("published key: in answer %v, in root bundle %v; answer has %d keys, root %d", found, rootJ.HasJWTAuthority("site-key"), len(keys), len(rootJ.JWTAuthorities()))
	}

	// Watch: the full upstream bundle is delivered.
	got := make(chan ca.UpstreamBundle, 16)
	wctx, wcancel := context.WithCancel(ctx)
	wdone := make(chan error, 1)
	go func() {
		wdone <- a.WatchUpstreamBundle(wctx, func(_ context.Context, b ca.UpstreamBundle) error {
			got <- b
			return nil
		})
	}()
	select {
	case b := <-got:
		if len(b.X509Authorities) != len(roots) || len(b.JWTKeys) != len(keys) {
			t.Fatalf("watched bundle: %d roots, %d JWT keys; want %d, %d", len(b.X509Authorities), len(b.JWTKeys), len(roots), len(keys))
		}
	case <-ctx.Done():
		t.Fatal("no bundle from the watcher")
	}
	wcancel()
	if err := <-wdone; err != nil {
		t.Fatalf("WatchUpstreamBundle: %v", err)
	}

	// Root down: calls fail within the call timeout. Root back (same data
	// and port): calls succeed again on the same Authority.
	root.StopT(t)
	if _, _, err := a.MintX509CA(ctx, csr(t), time.Hour); err == nil {
		t.Fatal("MintX509CA succeeded with the root stopped")
	}
	inproc.RunServer(t, rootCfg, nil, serverapp.Options{})
	for {
		chain, _, err = a.MintX509CA(ctx, csr(t), time.Hour)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("MintX509CA after the root came back: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !chain[0].IsCA {
		t.Fatal("minted certificate after recovery is not a CA")
	}
}
