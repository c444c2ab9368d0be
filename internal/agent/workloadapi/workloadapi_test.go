package workloadapi_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

const helperEnv = "SIGIL_WLAPI_TEST_CLIENT_SOCKET"

// TestMain lets the test binary act as a plain workload client (used to
// call the API from another uid).
func TestMain(m *testing.M) {
	if addr := os.Getenv(helperEnv); addr != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, err := workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr(addr))
		fmt.Printf("uid=%d code=%s\n", os.Getuid(), status.Code(err))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestX509SVIDsBundlesAndHints(t *testing.T) {
	e := startEnv(t, envOpts{})
	other := spiffeid.RequireTrustDomainFromString("other.org")
	otherCA := newTestCA(t, other)
	if err := e.cache.SetBundle(otherCA.bundle(t)); err != nil {
		t.Fatal(err)
	}
	now := e.clk.Now()
	idA, idB := mustID(t, "/workload/a"), mustID(t, "/workload/b")
	entA := entry("a", idA, now.Add(-time.Hour), uidSelector())
	entB := entry("b", idB, now.Add(-2*time.Hour), uidSelector())
	entB.Hint = "internal"
	entB.FederatesWith = []spiffeid.TrustDomain{other}
	// An entry that needs a selector the caller lacks.
	entC := entry("c", mustID(t, "/workload/c"), now, uidSelector(), selector.Selector{Type: "unix", Value: "user:nobody-here"})
	svA, svB := e.ca.svid(t, idA, now.Add(-time.Minute), now.Add(time.Hour)), e.ca.svid(t, idB, now.Add(-time.Minute), now.Add(time.Hour))
	e.addIdentity(t, []*cache.Entry{entA, entB, entC}, map[string]*cache.X509SVID{"a": svA, "b": svB})

	ctx := ctxT(t)
	xc, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr(e.addr))
	if err != nil {
		t.Fatal(err)
	}
	if len(xc.SVIDs) != 2 {
		t.Fatalf("got %d SVIDs, want 2 (entry c must not match)", len(xc.SVIDs))
	}
	// Hint-less entries come first even though b is older: a is the default.
	if xc.SVIDs[0].ID != idA || xc.SVIDs[1].ID != idB || xc.SVIDs[1].Hint != "internal" {
		t.Fatalf("order/hints: got %v(%q), %v(%q)", xc.SVIDs[0].ID, xc.SVIDs[0].Hint, xc.SVIDs[1].ID, xc.SVIDs[1].Hint)
	}
	if !xc.SVIDs[0].Certificates[0].Equal(svA.Chain[0]) || !keysEqual(xc.SVIDs[0].PrivateKey, svA.PrivateKey) {
		t.Fatal("served SVID a differs from the cached one")
	}
	for _, d := range []spiffeid.TrustDomain{td, other} {
		b, err := xc.Bundles.GetX509BundleForTrustDomain(d)
		if err != nil {
			t.Fatalf("bundle for %s: %v", d, err)
		}
		if len(b.X509Authorities()) != 1 {
			t.Fatalf("bundle for %s has %d authorities", d, len(b.X509Authorities()))
		}
	}
	// The served SVIDs verify against the served bundle.
	for _, s := range xc.SVIDs {
		if _, _, err := x509svid.Verify(s.Certificates, xc.Bundles); err != nil {
			t.Fatalf("verify %s: %v", s.ID, err)
		}
	}

	def, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(e.addr))
	if err != nil {
		t.Fatal(err)
	}
	if def.ID != idA {
		t.Fatalf("default SVID %s, want %s", def.ID, idA)
	}

	bundles, err := workloadapi.FetchX509Bundles(ctx, workloadapi.WithAddr(e.addr))
	if err != nil {
		t.Fatal(err)
	}
	if bundles.Len() != 2 || !bundles.Has(other) || !bundles.Has(td) {
		t.Fatalf("X.509 bundles: %d", bundles.Len())
	}
}

func TestMTLSBetweenTwoWorkloads(t *testing.T) {
	e := startEnv(t, envOpts{})
	now := e.clk.Now()
	idServer, idClient := mustID(t, "/server"), mustID(t, "/client")
	entS := entry("srv", idServer, now, uidSelector())
	entC := entry("cli", idClient, now, uidSelector())
	entC.Hint = "client"
	e.addIdentity(t, []*cache.Entry{entS, entC}, map[string]*cache.X509SVID{
		"srv": e.ca.svid(t, idServer, now.Add(-time.Minute), now.Add(time.Hour)),
		"cli": e.ca.svid(t, idClient, now.Add(-time.Minute), now.Add(time.Hour)),
	})
	ctx := ctxT(t)

	serverSrc, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(e.addr)))
	if err != nil {
		t.Fatal(err)
	}
	defer serverSrc.Close()
	clientSrc, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(e.addr)),
		workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
			for _, s := range svids {
				if s.Hint == "client" {
					return s
				}
			}
			return nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer clientSrc.Close()

	lis, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(serverSrc, serverSrc, tlsconfig.AuthorizeID(idClient)))
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go func() {
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				line, err := bufio.NewReader(conn).ReadString('\n')
				if err == nil {
					io.WriteString(conn, "echo:"+line)
				}
			}()
		}
	}()

	conn, err := tls.Dial("tcp", lis.Addr().String(), tlsconfig.MTLSClientConfig(clientSrc, clientSrc, tlsconfig.AuthorizeID(idServer)))
	if err != nil {
		t.Fatalf("mTLS dial: %v", err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "hello\n"); err != nil {
		t.Fatal(err)
	}
	reply, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || reply != "echo:hello\n" {
		t.Fatalf("reply %q, %v", reply, err)
	}
	peerID, err := x509svid.IDFromCert(conn.ConnectionState().PeerCertificates[0])
	if err != nil || peerID != idServer {
		t.Fatalf("peer %v, %v", peerID, err)
	}

	// Authorizing the wrong peer fails the handshake.
	bad, err := tls.Dial("tcp", lis.Addr().String(), tlsconfig.MTLSClientConfig(clientSrc, clientSrc, tlsconfig.AuthorizeID(mustID(t, "/someone-else"))))
	if err == nil {
		bad.Close()
		t.Fatal("handshake with an unauthorized server ID succeeded")
	}
}

func TestJWTSVIDs(t *testing.T) {
	e := startEnv(t, envOpts{})
	now := e.clk.Now()
	idA, idB := mustID(t, "/jwt/a"), mustID(t, "/jwt/b")
	e.addIdentity(t, []*cache.Entry{
		entry("a", idA, now.Add(-time.Hour), uidSelector()),
		entry("b", idB, now, uidSelector()),
	}, nil)
	ctx := ctxT(t)
	opt := workloadapi.WithAddr(e.addr)

	svid, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "svc-x"}, opt)
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != idA {
		t.Fatalf("default JWT-SVID for %s, want %s", svid.ID, idA)
	}
	all, err := workloadapi.FetchJWTSVIDs(ctx, jwtsvid.Params{Audience: "svc-x"}, opt)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || all[1].ID != idB {
		t.Fatalf("got %d JWT-SVIDs", len(all))
	}
	if got := e.minter.calls.Load(); got != 2 {
		t.Fatalf("minter called %d times, want 2 (second fetch must hit the cache)", got)
	}
	one, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "svc-x", Subject: idB}, opt)
	if err != nil || one.ID != idB {
		t.Fatalf("requested subject: %v, %v", one, err)
	}
	_, err = workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "svc-x", Subject: mustID(t, "/not-mine")}, opt)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("foreign subject: %v, want PermissionDenied", err)
	}

	// Validate through the Workload API.
	got, err := workloadapi.ValidateJWTSVID(ctx, svid.Marshal(), "svc-x", opt)
	if err != nil {
		t.Fatalf("validate: %v", err)
	}
	if got.ID != idA {
		t.Fatalf("validated %s", got.ID)
	}
	_, err = workloadapi.ValidateJWTSVID(ctx, svid.Marshal(), "svc-other", opt)
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("validate for another audience: %v, want InvalidArgument", err)
	}
	// Raw response carries the claims.
	raw := rawClient(t, e)
	resp, err := raw.ValidateJWTSVID(withHeader(ctx), &workloadpb.ValidateJWTSVIDRequest{Audience: "svc-x", Svid: svid.Marshal()})
	if err != nil {
		t.Fatal(err)
	}
	if resp.SpiffeId != idA.String() || resp.Claims.Fields["sub"].GetStringValue() != idA.String() {
		t.Fatalf("claims: %v", resp.Claims)
	}
	// A token signed by a key not in any bundle is rejected.
	stranger := newTestCA(t, td)
	forged, err := stranger.mintJWT(idA, []string{"svc-x"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := workloadapi.ValidateJWTSVID(ctx, forged, "svc-x", opt); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("forged token: %v", err)
	}

	// JWT bundles, and a JWTSource validating locally.
	jb, err := workloadapi.FetchJWTBundles(ctx, opt)
	if err != nil {
		t.Fatal(err)
	}
	b, err := jb.GetJWTBundleForTrustDomain(td)
	if err != nil || !b.HasJWTAuthority(e.ca.jwt.ID) {
		t.Fatalf("JWT bundle: %v", err)
	}
	src, err := workloadapi.NewJWTSource(ctx, workloadapi.WithClientOptions(opt))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	s2, err := src.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "svc-y"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(s2.Marshal(), src, []string{"svc-y"}); err != nil {
		t.Fatalf("local validation: %v", err)
	}
	if _, err := jwtsvid.ParseAndValidate(s2.Marshal(), src, []string{"svc-z"}); err == nil {
		t.Fatal("local validation for the wrong audience succeeded")
	}

	// Missing audience.
	if _, err := raw.FetchJWTSVID(withHeader(ctx), &workloadpb.JWTSVIDRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("no audience: %v", err)
	}
}

func rawClient(t *testing.T, e *env) workloadpb.SpiffeWorkloadAPIClient {
	t.Helper()
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return workloadpb.NewSpiffeWorkloadAPIClient(conn)
}

func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
}

func TestSecurityHeaderRequired(t *testing.T) {
	e := startEnv(t, envOpts{})
	now := e.clk.Now()
	id := mustID(t, "/hdr")
	e.addIdentity(t, []*cache.Entry{entry("h", id, now, uidSelector())},
		map[string]*cache.X509SVID{"h": e.ca.svid(t, id, now.Add(-time.Minute), now.Add(time.Hour))})
	ctx := ctxT(t)
	raw := rawClient(t, e)

	check := func(name string, err error) {
		t.Helper()
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s without header: %v, want InvalidArgument", name, err)
		}
	}
	st, err := raw.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
	if err == nil {
		_, err = st.Recv()
	}
	check("FetchX509SVID", err)
	_, err = raw.FetchJWTSVID(ctx, &workloadpb.JWTSVIDRequest{Audience: []string{"a"}})
	check("FetchJWTSVID", err)
	_, err = raw.ValidateJWTSVID(ctx, &workloadpb.ValidateJWTSVIDRequest{Audience: "a", Svid: "x.y.z"})
	check("ValidateJWTSVID", err)
	bs, err := raw.FetchJWTBundles(ctx, &workloadpb.JWTBundlesRequest{})
	if err == nil {
		_, err = bs.Recv()
	}
	check("FetchJWTBundles", err)
	// A wrong value is not the header either.
	st, err = raw.FetchX509SVID(metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "yes"), &workloadpb.X509SVIDRequest{})
	if err == nil {
		_, err = st.Recv()
	}
	check("FetchX509SVID with a wrong header value", err)

	// With the header the same call works.
	st, err = raw.FetchX509SVID(withHeader(ctx), &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil || len(resp.Svids) != 1 || resp.Svids[0].SpiffeId != id.String() {
		t.Fatalf("with header: %v, %v", resp, err)
	}

	// Health and reflection are served on the socket.
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hr, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hr.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v, %v", hr, err)
	}
}

func TestNoIdentityIsPermissionDenied(t *testing.T) {
	e := startEnv(t, envOpts{})
	// An entry for some other uid only.
	now := e.clk.Now()
	id := mustID(t, "/other-uid")
	e.addIdentity(t, []*cache.Entry{entry("o", id, now, selector.Selector{Type: "unix", Value: "uid:4242"})},
		map[string]*cache.X509SVID{"o": e.ca.svid(t, id, now.Add(-time.Minute), now.Add(time.Hour))})
	ctx := ctxT(t)
	opt := workloadapi.WithAddr(e.addr)
	if _, err := workloadapi.FetchX509SVID(ctx, opt); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("FetchX509SVID: %v, want PermissionDenied", err)
	}
	if _, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "a"}, opt); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("FetchJWTSVID: %v, want PermissionDenied", err)
	}
	if _, err := workloadapi.FetchX509Bundles(ctx, opt); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("FetchX509Bundles: %v, want PermissionDenied", err)
	}
	if _, err := workloadapi.FetchJWTBundles(ctx, opt); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("FetchJWTBundles: %v, want PermissionDenied", err)
	}
}

// TestOtherUserIsDenied runs the test binary as nobody against a server
// that only has an identity for our uid.
func TestOtherUserIsDenied(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a client process as another user (uid 65534)")
	}
	e := startEnv(t, envOpts{})
	now := e.clk.Now()
	id := mustID(t, "/root-only")
	e.addIdentity(t, []*cache.Entry{entry("r", id, now, uidSelector())},
		map[string]*cache.X509SVID{"r": e.ca.svid(t, id, now.Add(-time.Minute), now.Add(time.Hour))})

	// nobody must be able to reach the socket and run a copy of the binary.
	for _, d := range []string{e.dir, filepath.Dir(e.socket)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(e.dir, "client.test")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}

	run := func(cred *syscall.Credential) string {
		cmd := exec.Command(bin, "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"="+e.addr)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helper: %v\n%s", err, out)
		}
		return string(out)
	}
	if out := run(&syscall.Credential{Uid: 65534, Gid: 65534}); !strings.Contains(out, "uid=65534 code=PermissionDenied") {
		t.Fatalf("nobody got: %s", out)
	}
	// Control: the same binary as root is served.
	if out := run(nil); !strings.Contains(out, "uid=0 code=OK") {
		t.Fatalf("root got: %s", out)
	}
}

// watcher collects X509Context updates.
type watcher struct{ ch chan *workloadapi.X509Context }

func (w watcher) OnX509ContextUpdate(c *workloadapi.X509Context) { w.ch <- c }
func (w watcher) OnX509ContextWatchError(error)                  {}

func (w watcher) next(t *testing.T) *workloadapi.X509Context {
	t.Helper()
	select {
	case c := <-w.ch:
		return c
	case <-time.After(20 * time.Second):
		t.Fatal("no X.509 context update")
		return nil
	}
}

func watch(t *testing.T, e *env) watcher {
	t.Helper()
	w := watcher{ch: make(chan *workloadapi.X509Context, 16)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		workloadapi.WatchX509Context(ctx, w, workloadapi.WithAddr(e.addr))
	}()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

func ids(c *workloadapi.X509Context) []string {
	var out []string
	for _, s := range c.SVIDs {
		out = append(out, s.ID.Path())
	}
	return out
}

func TestStreamUpdates(t *testing.T) {
	e := startEnv(t, envOpts{})
	now := e.clk.Now()
	idA, idB := mustID(t, "/a"), mustID(t, "/b")
	entA := entry("a", idA, now.Add(-time.Hour), uidSelector())
	svA := e.ca.svid(t, idA, now.Add(-time.Minute), now.Add(time.Hour))
	e.addIdentity(t, []*cache.Entry{entA}, map[string]*cache.X509SVID{"a": svA})

	w := watch(t, e)
	if got := ids(w.next(t)); strings.Join(got, ",") != "/a" {
		t.Fatalf("initial: %v", got)
	}

	// A new entry (with its SVID) reaches the open stream.
	entB := entry("b", idB, now, uidSelector())
	if err := e.cache.SetEntries([]*cache.Entry{entA, entB}); err != nil {
		t.Fatal(err)
	}
	if err := e.cache.SetX509SVIDs(map[string]*cache.X509SVID{"b": e.ca.svid(t, idB, now.Add(-time.Minute), now.Add(time.Hour))}); err != nil {
		t.Fatal(err)
	}
	for c := w.next(t); strings.Join(ids(c), ",") != "/a,/b"; c = w.next(t) {
		t.Logf("intermediate update: %v", ids(c))
	}

	// A rotated SVID is pushed.
	rotated := e.ca.svid(t, idA, now, now.Add(2*time.Hour))
	if err := e.cache.SetX509SVIDs(map[string]*cache.X509SVID{"a": rotated}); err != nil {
		t.Fatal(err)
	}
	c := w.next(t)
	if !c.SVIDs[0].Certificates[0].Equal(rotated.Chain[0]) || !keysEqual(c.SVIDs[0].PrivateKey, rotated.PrivateKey) {
		t.Fatalf("rotation not pushed: serial %v", c.SVIDs[0].Certificates[0].SerialNumber)
	}

	// A bundle change is pushed.
	nb := e.ca.bundle(t)
	extra := newTestCA(t, td)
	nb.AddX509Authority(extra.Cert)
	if err := e.cache.SetBundle(nb); err != nil {
		t.Fatal(err)
	}
	c = w.next(t)
	b, err := c.Bundles.GetX509BundleForTrustDomain(td)
	if err != nil || len(b.X509Authorities()) != 2 {
		t.Fatalf("bundle update not pushed: %v", err)
	}

	// Removing an entry is pushed.
	if err := e.cache.SetEntries([]*cache.Entry{entB}); err != nil {
		t.Fatal(err)
	}
	if got := ids(w.next(t)); strings.Join(got, ",") != "/b" {
		t.Fatalf("after removal: %v", got)
	}
}

func TestExpiredSVIDIsNotServed(t *testing.T) {
	e := startEnv(t, envOpts{})
	now := e.clk.Now()
	idShort, idLong := mustID(t, "/short"), mustID(t, "/long")
	e.addIdentity(t, []*cache.Entry{
		entry("s", idShort, now.Add(-time.Hour), uidSelector()),
		entry("l", idLong, now, uidSelector()),
	}, map[string]*cache.X509SVID{
		"s": e.ca.svid(t, idShort, now.Add(-time.Minute), now.Add(10*time.Minute)),
		"l": e.ca.svid(t, idLong, now.Add(-time.Minute), now.Add(time.Hour)),
	})
	w := watch(t, e)
	if got := strings.Join(ids(w.next(t)), ","); got != "/short,/long" {
		t.Fatalf("initial: %v", got)
	}
	// Past the short SVID's NotAfter the open stream drops it.
	e.clk.Add(11 * time.Minute)
	if got := strings.Join(ids(w.next(t)), ","); got != "/long" {
		t.Fatalf("after expiry: %v", got)
	}
	svids, err := workloadapi.FetchX509SVIDs(ctxT(t), workloadapi.WithAddr(e.addr))
	if err != nil || len(svids) != 1 || svids[0].ID != idLong {
		t.Fatalf("fetch after expiry: %v", err)
	}

	// Once every SVID has expired, nothing is served: the call waits for a
	// new SVID and gives up with Unavailable after IdentityWait.
	e.clk.Add(time.Hour)
	before := e.clk.Waiters()
	type result struct {
		svids []*x509svid.SVID
		err   error
	}
	res := make(chan result, 1)
	go func() {
		s, err := workloadapi.FetchX509SVIDs(ctxT(t), workloadapi.WithAddr(e.addr))
		res <- result{s, err}
	}()
	waitFor(t, func() bool { return e.clk.Waiters() > before })
	e.clk.Add(identityWait)
	if r := <-res; status.Code(r.err) != codes.Unavailable {
		t.Fatalf("after every SVID expired: %d SVIDs, %v; want Unavailable", len(r.svids), r.err)
	}
	if _, ok := e.cache.X509SVID("l"); ok {
		t.Fatal("cache returns an expired SVID")
	}
}

func TestWaitsForFirstSVIDThenUnavailable(t *testing.T) {
	e := startEnv(t, envOpts{})
	now := e.clk.Now()
	id := mustID(t, "/pending")
	e.addIdentity(t, []*cache.Entry{entry("p", id, now, uidSelector())}, nil)
	ctx := ctxT(t)

	// The SVID arrives while the caller waits: it is served.
	type result struct {
		svid *x509svid.SVID
		err  error
	}
	res := make(chan result, 1)
	go func() {
		s, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(e.addr))
		res <- result{s, err}
	}()
	waitFor(t, func() bool { return e.clk.Waiters() > 0 }) // the server armed its wait timer
	if err := e.cache.SetX509SVIDs(map[string]*cache.X509SVID{"p": e.ca.svid(t, id, now.Add(-time.Minute), now.Add(time.Hour))}); err != nil {
		t.Fatal(err)
	}
	r := <-res
	if r.err != nil || r.svid.ID != id {
		t.Fatalf("got %v, %v", r.svid, r.err)
	}

	// No SVID within IdentityWait: Unavailable.
	id2 := mustID(t, "/never")
	if err := e.cache.SetEntries([]*cache.Entry{entry("n", id2, now, uidSelector())}); err != nil {
		t.Fatal(err)
	}
	before := e.clk.Waiters()
	go func() {
		s, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(e.addr))
		res <- result{s, err}
	}()
	waitFor(t, func() bool { return e.clk.Waiters() > before })
	e.clk.Add(identityWait)
	r = <-res
	if status.Code(r.err) != codes.Unavailable {
		t.Fatalf("got %v, want Unavailable", r.err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRestartServesPersistedSVID(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	clk := clock.NewFake(time.Now())
	ca := newTestCA(t, td)
	now := clk.Now()
	id := mustID(t, "/persisted")
	sv := ca.svid(t, id, now.Add(-time.Minute), now.Add(time.Hour))
	{
		e := startEnv(t, envOpts{dir: dataDir, clk: clk, ca: ca})
		e.addIdentity(t, []*cache.Entry{entry("p", id, now, uidSelector())}, map[string]*cache.X509SVID{"p": sv})
	}

	// A new cache on the same directory, nothing else: no server, no sets.
	c2 := cache.New(cache.Config{Dir: dataDir, TrustDomain: td, Clock: clk, Log: testLog(t)})
	if err := c2.Load(); err != nil {
		t.Fatal(err)
	}
	e2 := startEnv(t, envOpts{existing: c2, clk: clk, ca: ca})
	got, err := workloadapi.FetchX509Context(ctxT(t), workloadapi.WithAddr(e2.addr))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.SVIDs) != 1 || !got.SVIDs[0].Certificates[0].Equal(sv.Chain[0]) || !keysEqual(got.SVIDs[0].PrivateKey, sv.PrivateKey) {
		t.Fatal("restarted agent does not serve the persisted SVID and key")
	}
	if _, _, err := x509svid.Verify(got.SVIDs[0].Certificates, got.Bundles); err != nil {
		t.Fatalf("persisted bundle does not verify the SVID: %v", err)
	}

	// Permissions of what was written.
	fi, err := os.Stat(dataDir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("data dir mode %v, %v", fi.Mode().Perm(), err)
	}
	fi, err = os.Stat(filepath.Join(dataDir, cache.FileName))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("cache file mode %v, %v", fi.Mode().Perm(), err)
	}
}
