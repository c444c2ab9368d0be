package agentcli

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// pki is a small test trust domain: a CA, a workload SVID, a federated CA
// and a JWT signing key.
type pki struct {
	ca, fedCA *x509.Certificate
	leaf      *x509.Certificate
	leafKey   crypto.Signer
	jwtKey    *testca.JWTKey
	jwtBundle *jwtbundle.Bundle
}

var (
	td    = spiffeid.RequireTrustDomainFromString("example.org")
	fedTD = spiffeid.RequireTrustDomainFromString("other.org")
	webID = spiffeid.RequireFromString("spiffe://example.org/web")
)

func newPKI(t testing.TB) *pki {
	ca := func(d spiffeid.TrustDomain, serial int64) *testca.CA {
		return testca.New(t, testca.TrustDomain(d), testca.Subject(d.Name()), testca.Serial(serial),
			testca.Validity(time.Unix(1600000000, 0), time.Now().Add(24*time.Hour)), testca.KeyUsage(x509.KeyUsageCertSign))
	}
	root := ca(td, 1)
	leaf := root.SVID(t, webID, testca.Serial(3), testca.Validity(time.Unix(1700000000, 0), time.Now().Add(time.Hour)),
		testca.KeyUsage(x509.KeyUsageDigitalSignature), testca.ExtKeyUsage())
	jwtKey := testca.NewJWTKey(t, "k1")
	return &pki{ca: root.Cert, fedCA: ca(fedTD, 2).Cert, leaf: leaf.Certificates[0], leafKey: leaf.PrivateKey, jwtKey: jwtKey, jwtBundle: jwtKey.JWTBundle(td)}
}

func (p *pki) token(t *testing.T, aud ...string) string {
	t.Helper()
	tok, err := p.jwtKey.SignJWTSVID(webID, aud, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// fakeWorkloadAPI is a minimal Workload API server: it answers with fixed
// material and insists on the security header, like a real agent.
type fakeWorkloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	p    *pki
	t    *testing.T
	deny bool
	// jwtErr, when set, is FetchJWTSVID's answer.
	jwtErr error
	// updates is sent on the X.509 stream after the first response (watch).
	updates chan *workload.X509SVIDResponse
}

func checkHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	return nil
}

func (f *fakeWorkloadAPI) x509Response() *workload.X509SVIDResponse {
	key, err := x509.MarshalPKCS8PrivateKey(f.p.leafKey)
	if err != nil {
		f.t.Error(err)
	}
	return &workload.X509SVIDResponse{
		Svids: []*workload.X509SVID{{
			SpiffeId: webID.String(), X509Svid: f.p.leaf.Raw, X509SvidKey: key, Bundle: f.p.ca.Raw, Hint: "internal",
		}},
		FederatedBundles: map[string][]byte{fedTD.IDString(): f.p.fedCA.Raw},
	}
}

func (f *fakeWorkloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, s workload.SpiffeWorkloadAPI_FetchX509SVIDServer) error {
	if err := checkHeader(s.Context()); err != nil {
		return err
	}
	if f.deny {
		return status.Error(codes.PermissionDenied, "no identity issued")
	}
	if err := s.Send(f.x509Response()); err != nil {
		return err
	}
	for {
		select {
		case <-s.Context().Done():
			return nil
		case u := <-f.updates:
			if err := s.Send(u); err != nil {
				return err
			}
		}
	}
}

func (f *fakeWorkloadAPI) FetchX509Bundles(_ *workload.X509BundlesRequest, s workload.SpiffeWorkloadAPI_FetchX509BundlesServer) error {
	if err := checkHeader(s.Context()); err != nil {
		return err
	}
	if err := s.Send(&workload.X509BundlesResponse{Bundles: map[string][]byte{td.IDString(): f.p.ca.Raw}}); err != nil {
		return err
	}
	<-s.Context().Done()
	return nil
}

func (f *fakeWorkloadAPI) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	if err := checkHeader(ctx); err != nil {
		return nil, err
	}
	if len(req.Audience) == 0 {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	if req.SpiffeId != "" && req.SpiffeId != webID.String() {
		return nil, status.Error(codes.PermissionDenied, "no identity issued")
	}
	if f.jwtErr != nil {
		return nil, f.jwtErr
	}
	return &workload.JWTSVIDResponse{Svids: []*workload.JWTSVID{{SpiffeId: webID.String(), Svid: f.p.token(f.t, req.Audience...)}}}, nil
}

func (f *fakeWorkloadAPI) FetchJWTBundles(_ *workload.JWTBundlesRequest, s workload.SpiffeWorkloadAPI_FetchJWTBundlesServer) error {
	if err := checkHeader(s.Context()); err != nil {
		return err
	}
	doc, err := f.p.jwtBundle.Marshal()
	if err != nil {
		return err
	}
	if err := s.Send(&workload.JWTBundlesResponse{Bundles: map[string][]byte{td.IDString(): doc}}); err != nil {
		return err
	}
	<-s.Context().Done()
	return nil
}

func (f *fakeWorkloadAPI) ValidateJWTSVID(ctx context.Context, req *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	if err := checkHeader(ctx); err != nil {
		return nil, err
	}
	svid, err := jwtsvid.ParseAndValidate(req.Svid, jwtbundle.NewSet(f.p.jwtBundle), []string{req.Audience})
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	claims, err := structpb.NewStruct(svid.Claims)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &workload.ValidateJWTSVIDResponse{SpiffeId: svid.ID.String(), Claims: claims}, nil
}

type agentFixture struct {
	socket string
	p      *pki
	fake   *fakeWorkloadAPI
	health *health.Server
}

func startAgent(t *testing.T, withHealth bool) *agentFixture {
	t.Helper()
	p := newPKI(t)
	fake := &fakeWorkloadAPI{p: p, t: t, updates: make(chan *workload.X509SVIDResponse, 1)}
	gs := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(gs, fake)
	var hs *health.Server
	if withHealth {
		hs = health.NewServer()
		healthpb.RegisterHealthServer(gs, hs)
	}
	sock := filepath.Join(t.TempDir(), "api.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return &agentFixture{socket: sock, p: p, fake: fake, health: hs}
}

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func (a *agentFixture) cli(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errOut := run(t, append(args, "-socketPath", a.socket)...)
	if code != 0 {
		t.Fatalf("%v: exit %d\nstdout:\n%s\nstderr:\n%s", args, code, out, errOut)
	}
	return out
}

func TestFetchX509Pretty(t *testing.T) {
	a := startAgent(t, true)
	for _, args := range [][]string{{"api", "fetch", "x509"}, {"api", "fetch"}} {
		out := a.cli(t, args...)
		want := []string{
			"SPIFFE ID:\t\tspiffe://example.org/web\n",
			"Hint:\t\t\tinternal\n",
			fmt.Sprintf("SVID Valid After:\t%v\n", a.p.leaf.NotBefore),
			fmt.Sprintf("SVID Valid Until:\t%v\n", a.p.leaf.NotAfter),
			fmt.Sprintf("CA #1 Valid After:\t%v\n", a.p.ca.NotBefore),
			fmt.Sprintf("CA #1 Valid Until:\t%v\n", a.p.ca.NotAfter),
			fmt.Sprintf("[spiffe://other.org] CA #1 Valid After:\t%v\n", a.p.fedCA.NotBefore),
		}
		if !strings.HasPrefix(out, "Received 1 svid after ") {
			t.Errorf("%v: header:\n%s", args, out)
		}
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("%v: output lacks %q:\n%s", args, w, out)
			}
		}
	}
	if out := a.cli(t, "api", "fetch", "x509", "-silent"); out != "" {
		t.Errorf("-silent printed %q", out)
	}
}

func TestFetchX509Write(t *testing.T) {
	a := startAgent(t, true)
	dir := filepath.Join(t.TempDir(), "out")
	out := a.cli(t, "api", "fetch", "x509", "-silent", "-write", dir)
	for _, w := range []string{
		"Writing SVID #0 to file " + filepath.Join(dir, "svid.0.pem") + ".\n",
		"Writing key #0 to file " + filepath.Join(dir, "svid.0.key") + ".\n",
		"Writing bundle #0 to file " + filepath.Join(dir, "bundle.0.pem") + ".\n",
		"Writing federated bundle #0 for trust domain spiffe://other.org to file " + filepath.Join(dir, "federated_bundle.0.0.pem") + ".\n",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
	svid, err := x509svid.Load(filepath.Join(dir, "svid.0.pem"), filepath.Join(dir, "svid.0.key"))
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := x509bundle.Load(td, filepath.Join(dir, "bundle.0.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if id, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil || id != webID {
		t.Errorf("written SVID: %v %v", id, err)
	}
	fed, err := x509bundle.Load(fedTD, filepath.Join(dir, "federated_bundle.0.0.pem"))
	if err != nil || !fed.X509Authorities()[0].Equal(a.p.fedCA) {
		t.Errorf("federated bundle: %v", err)
	}
	st, err := os.Stat(filepath.Join(dir, "svid.0.key"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v, want 0600", st.Mode().Perm())
	}
}

func TestFetchX509JSON(t *testing.T) {
	a := startAgent(t, true)
	out := a.cli(t, "api", "fetch", "x509", "-output", "json")
	var resp workload.X509SVIDResponse
	if err := protojson.Unmarshal([]byte(out), &resp); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(resp.Svids) != 1 || resp.Svids[0].SpiffeId != webID.String() || !bytes.Equal(resp.Svids[0].X509Svid, a.p.leaf.Raw) ||
		!bytes.Equal(resp.Svids[0].Bundle, a.p.ca.Raw) || !bytes.Equal(resp.FederatedBundles[fedTD.IDString()], a.p.fedCA.Raw) {
		t.Errorf("json response: %v", &resp)
	}
	if code, _, errOut := run(t, "api", "fetch", "x509", "-output", "json", "-write", t.TempDir(), "-socketPath", a.socket); code != 1 ||
		!strings.Contains(errOut, "-write is only available with -output pretty") {
		t.Errorf("json + write: %d %q", code, errOut)
	}
}

func TestFetchX509RejectsUnverifiableSVID(t *testing.T) {
	var f fakeWorkloadAPI
	f.p = newPKI(t)
	other := newPKI(t) // a different CA with the same trust domain
	resp := (&fakeWorkloadAPI{p: f.p, t: t}).x509Response()
	resp.Svids[0].Bundle = other.ca.Raw
	c, err := parseForTest(resp)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newX509View(c); err == nil || !strings.Contains(err.Error(), "failed verification against bundle") {
		t.Errorf("want verification error, got %v", err)
	}
}

// parseForTest builds an X509Context the way the go-spiffe client does.
func parseForTest(resp *workload.X509SVIDResponse) (*workloadapi.X509Context, error) {
	svid, err := x509svid.ParseRaw(resp.Svids[0].X509Svid, resp.Svids[0].X509SvidKey)
	if err != nil {
		return nil, err
	}
	b, err := x509bundle.ParseRaw(svid.ID.TrustDomain(), resp.Svids[0].Bundle)
	if err != nil {
		return nil, err
	}
	return &workloadapi.X509Context{SVIDs: []*x509svid.SVID{svid}, Bundles: x509bundle.NewSet(b)}, nil
}

func TestFetchJWT(t *testing.T) {
	a := startAgent(t, true)
	out := a.cli(t, "api", "fetch", "jwt", "-audience", "db,cache")
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 4 || lines[0] != "token(spiffe://example.org/web):" || lines[2] != "bundle(spiffe://example.org):" {
		t.Fatalf("output:\n%s", out)
	}
	svid, err := jwtsvid.ParseAndValidate(strings.TrimPrefix(lines[1], "\t"), jwtbundle.NewSet(a.p.jwtBundle), []string{"cache"})
	if err != nil {
		t.Fatalf("printed token: %v", err)
	}
	if len(svid.Audience) != 2 {
		t.Errorf("audiences %v", svid.Audience)
	}
	if _, err := jwtbundle.Parse(td, []byte(strings.TrimPrefix(lines[3], "\t"))); err != nil {
		t.Errorf("printed bundle: %v", err)
	}

	out = a.cli(t, "api", "fetch", "jwt", "-audience", "db", "-output", "json")
	var both []json.RawMessage
	if err := json.Unmarshal([]byte(out), &both); err != nil || len(both) != 2 {
		t.Fatalf("json: %v\n%s", err, out)
	}
	var sr workload.JWTSVIDResponse
	if err := protojson.Unmarshal(both[0], &sr); err != nil || len(sr.Svids) != 1 || sr.Svids[0].SpiffeId != webID.String() {
		t.Errorf("json svids: %v %v", err, &sr)
	}

	code, _, errOut := run(t, "api", "fetch", "jwt", "-socketPath", a.socket)
	if code != 1 || !strings.Contains(errOut, "audience must be specified") {
		t.Errorf("missing audience: %d %q", code, errOut)
	}
	code, _, errOut = run(t, "api", "fetch", "jwt", "-audience", "db", "-spiffeID", "spiffe://example.org/other", "-socketPath", a.socket)
	if code != 1 || !strings.Contains(errOut, "code: PermissionDenied") || !strings.Contains(errOut, "no registration entry matches") {
		t.Errorf("foreign spiffeID: %d %q", code, errOut)
	}
}

// TestUnavailableFromTheAgent: an Unavailable the agent sends (its server
// unreachable and no cached JWT-SVID) is shown as the agent's answer, not as
// an agent that cannot be reached; a socket nobody answers on still is.
func TestUnavailableFromTheAgent(t *testing.T) {
	a := startAgent(t, true)
	a.fake.jwtErr = status.Error(codes.Unavailable, `server unreachable; no cached JWT-SVID for audience "b" of spiffe://example.org/web`)
	code, _, errOut := run(t, "api", "fetch", "jwt", "-audience", "b", "-socketPath", a.socket)
	if code != 1 || !strings.Contains(errOut, `server unreachable; no cached JWT-SVID for audience "b"`) ||
		!strings.Contains(errOut, "code: Unavailable, from the agent at") || strings.Contains(errOut, "is the agent running") {
		t.Errorf("agent's Unavailable: %d %q", code, errOut)
	}

	// A socket file left behind, nobody listening.
	stale := filepath.Join(t.TempDir(), "stale.sock")
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	lis.SetUnlinkOnClose(false)
	_ = lis.Close()
	code, _, errOut = run(t, "api", "fetch", "jwt", "-audience", "b", "-timeout", "10s", "-socketPath", stale)
	if code != 1 || !strings.Contains(errOut, "agent unavailable at") || !strings.Contains(errOut, "is the agent running") {
		t.Errorf("stale socket: %d %q", code, errOut)
	}
}

func TestValidateJWT(t *testing.T) {
	a := startAgent(t, true)
	tok := a.p.token(t, "db")
	out := a.cli(t, "api", "validate", "jwt", "-audience", "db", "-svid", tok)
	if !strings.HasPrefix(out, "SVID is valid.\nSPIFFE ID : spiffe://example.org/web\nClaims    : {") || !strings.Contains(out, `"sub":"spiffe://example.org/web"`) {
		t.Errorf("valid token:\n%s", out)
	}
	code, out, errOut := run(t, "api", "validate", "jwt", "-audience", "other", "-svid", tok, "-socketPath", a.socket)
	if code != 1 || out != "" || !strings.Contains(errOut, "SVID is not valid") {
		t.Errorf("wrong audience: %d %q %q", code, out, errOut)
	}
	code, _, errOut = run(t, "api", "validate", "jwt", "-audience", "db", "-socketPath", a.socket)
	if code != 1 || !strings.Contains(errOut, "svid must be specified") {
		t.Errorf("missing svid: %d %q", code, errOut)
	}
}

// signalWriter is a concurrency-safe buffer that reports each write.
type signalWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	wrote chan struct{}
}

func (w *signalWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.buf.Write(p)
	select {
	case w.wrote <- struct{}{}:
	default:
	}
	return n, err
}

func (w *signalWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func TestWatchPrintsEveryUpdate(t *testing.T) {
	a := startAgent(t, true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &signalWriter{wrote: make(chan struct{}, 1)}
	var errb bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- Run(ctx, []string{"api", "watch", "-socketPath", a.socket}, out, &errb) }()

	waitFor := func(n int) {
		t.Helper()
		for strings.Count(out.String(), "SPIFFE ID:") < n {
			select {
			case <-out.wrote:
			case code := <-done:
				t.Fatalf("watch exited early with %d: %s", code, errb.String())
			}
		}
	}
	waitFor(1)
	a.fake.updates <- a.fake.x509Response() // a rotation pushes a new full state
	waitFor(2)
	cancel() // what Ctrl-C does: main's signal context ends
	if code := <-done; code != 0 || errb.String() != "" {
		t.Errorf("watch exit %d after cancel, stderr %q; want 0 and nothing on stderr", code, errb.String())
	}
	if strings.Count(out.String(), "Received 1 svid after ") != 2 {
		t.Errorf("output:\n%s", out.String())
	}
}

func TestHealthcheck(t *testing.T) {
	a := startAgent(t, true)
	if out := a.cli(t, "healthcheck"); out != "Agent is healthy.\n" {
		t.Errorf("healthy: %q", out)
	}
	a.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	code, out, errOut := run(t, "healthcheck", "-socketPath", a.socket)
	if code != 1 || out != "" || !strings.Contains(errOut, "agent is unhealthy") {
		t.Errorf("not serving: %d %q %q", code, out, errOut)
	}

	// Without a health service, a Workload API answer (even "no identity")
	// shows the agent is up.
	b := startAgent(t, false)
	b.fake.deny = true
	if out := b.cli(t, "healthcheck", "-verbose"); !strings.HasSuffix(out, "Agent is healthy.\n") || !strings.Contains(out, "probing the Workload API") {
		t.Errorf("fallback probe: %q", out)
	}

	code, _, errOut = run(t, "healthcheck", "-verbose", "-socketPath", filepath.Join(t.TempDir(), "none.sock"))
	if code != 1 || !strings.Contains(errOut, "is the agent running") || !strings.Contains(errOut, "agent is unhealthy") {
		t.Errorf("no socket: %d %q", code, errOut)
	}
}

func TestDispatchAndValidation(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.sock")
	tests := []struct {
		args     []string
		code     int
		inStderr string
		inStdout string
	}{
		{nil, ExitError, "Available commands are:", ""},
		{[]string{"--help"}, ExitOK, "", "api fetch x509"},
		{[]string{"bogus"}, ExitUnknownCommand, "Available commands: api, healthcheck, run, validate, version", ""},
		{[]string{"api", "fetch", "wit"}, ExitError, `unexpected argument "wit"`, ""},
		{[]string{"api", "frob"}, ExitUnknownCommand, `unknown command "api frob"`, ""},
		{[]string{"api"}, ExitError, "api fetch x509", ""},
		{[]string{"api", "fetch", "x509", "-h"}, ExitOK, "", "-write"},
		{[]string{"api", "-h"}, ExitOK, "", "api fetch x509"},
		{[]string{"api", "fetch", "x509", "-output", "yaml"}, ExitError, `unknown -output "yaml"`, ""},
		{[]string{"api", "fetch", "x509", "-timeout", "0s"}, ExitError, "-timeout must be positive", ""},
		{[]string{"api", "fetch", "x509", "-socketPath", missing}, ExitError, "is the agent running", ""},
		{[]string{"api", "fetch", "jwt", "-audience", "a", "-spiffeID", "nope", "-socketPath", missing}, ExitError, "invalid -spiffeID", ""},
		{[]string{"api", "validate", "jwt", "-svid", "x", "-socketPath", missing}, ExitError, "audience must be specified", ""},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, out, errOut := run(t, tt.args...)
			if code != tt.code || !strings.Contains(errOut, tt.inStderr) || !strings.Contains(out, tt.inStdout) {
				t.Errorf("exit %d (want %d)\nstdout %q\nstderr %q", code, tt.code, out, errOut)
			}
		})
	}
}

func TestCommaFlag(t *testing.T) {
	var f commaFlag
	_ = f.Set("a, b")
	_ = f.Set("c,,")
	if strings.Join(f, "|") != "a|b|c" {
		t.Errorf("got %v", f)
	}
}
