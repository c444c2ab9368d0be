package agentcli

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/agent/endpoints"
	"github.com/sigil-spiffe/sigil/internal/agent/workloadapi"
	"github.com/sigil-spiffe/sigil/internal/attest/workload/unix"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// TestRoundTripRealWorkloadAPI runs the commands against Sigil's own
// Workload API server, with an entry that matches this test process.
func TestRoundTripRealWorkloadAPI(t *testing.T) {
	p := newPKI(t)
	socket := startWorkloadAPI(t, p, spiffebundle.FromX509Authorities(td, []*x509.Certificate{p.ca}))
	a := &agentFixture{socket: socket, p: p}

	if out := a.cli(t, "healthcheck"); out != "Agent is healthy.\n" {
		t.Errorf("healthcheck: %q", out)
	}
	out := a.cli(t, "api", "fetch", "x509")
	if !strings.HasPrefix(out, "Received 1 svid after ") || !strings.Contains(out, "SPIFFE ID:\t\tspiffe://example.org/web\n") {
		t.Errorf("fetch x509:\n%s", out)
	}
	wdir := t.TempDir()
	a.cli(t, "api", "fetch", "x509", "-silent", "-write", wdir)
	svid, err := x509svid.Load(filepath.Join(wdir, "svid.0.pem"), filepath.Join(wdir, "svid.0.key"))
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := x509bundle.Load(td, filepath.Join(wdir, "bundle.0.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if id, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil || id != webID {
		t.Errorf("written SVID: %v %v", id, err)
	}
}

// startWorkloadAPI runs Sigil's Workload API on a real socket, over a
// cache holding bundle and p's SVID for an entry that matches this process,
// until cleanup, and returns the socket path.
func startWorkloadAPI(tb testing.TB, p *pki, bundle *spiffebundle.Bundle) string {
	tb.Helper()
	c := cache.New(cache.Config{TrustDomain: td})
	if err := c.SetBundle(bundle); err != nil {
		tb.Fatal(err)
	}
	me := selector.Selector{Type: "unix", Value: "uid:" + strconv.Itoa(os.Getuid())}
	if err := c.SetEntries([]*cache.Entry{{
		ID: "e1", SPIFFEID: webID, ParentID: spiffeid.RequireFromPath(td, "/agent"),
		Selectors: []selector.Selector{me}, RevisionNumber: 1, CreatedAt: time.Now(),
	}}); err != nil {
		tb.Fatal(err)
	}
	if err := c.SetX509SVIDs(map[string]*cache.X509SVID{"e1": {Chain: []*x509.Certificate{p.leaf}, PrivateKey: p.leafKey}}); err != nil {
		tb.Fatal(err)
	}
	socket := filepath.Join(testutil.ShortTempDir(tb), "api.sock")
	wl, err := workloadapi.New(workloadapi.Config{Cache: c})
	if err != nil {
		tb.Fatal(err)
	}
	srv, err := endpoints.New(endpoints.Config{SocketPath: socket, Attestor: unix.New(unix.Config{}), Services: []endpoints.Service{wl}})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- srv.Run(ctx) }()
	go func() { done <- c.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				tb.Errorf("run: %v", err)
			}
		}
	})
	select {
	case <-srv.Ready():
	case err := <-done:
		tb.Fatalf("workload API stopped: %v", err)
	}
	return socket
}
