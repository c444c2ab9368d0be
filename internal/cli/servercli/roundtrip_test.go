package servercli

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/encoding/protojson"

	serverapp "github.com/sigil-spiffe/sigil/internal/app/server"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/inproc"
)

// testServer is a real sigil-server (internal/app/server, in process) whose
// admin socket the commands talk to.
type testServer struct {
	socket string
	srv    *inproc.Server
}

func startServer(t *testing.T) *testServer {
	t.Helper()
	dir := testutil.ShortTempDir(t)
	cfg := inproc.ServerConfig(spiffeid.RequireTrustDomainFromString("example.org"), filepath.Join(dir, "data"), filepath.Join(dir, "api.sock"), 0)
	return &testServer{socket: cfg.SocketPath, srv: inproc.RunServer(t, cfg, nil, serverapp.Options{})}
}

// startUnhealthy serves only the gRPC health service, NOT_SERVING, on a
// unix socket: a server that answers but is not healthy.
func startUnhealthy(t *testing.T) *testServer {
	t.Helper()
	gs := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	sock := filepath.Join(testutil.ShortTempDir(t), "api.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return &testServer{socket: sock}
}

// cli runs a command against the test server and fails the test on a
// non-zero exit.
func (s *testServer) cli(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errOut := s.try(t, args...)
	if code != 0 {
		t.Fatalf("%v: exit %d\nstdout:\n%s\nstderr:\n%s", args, code, out, errOut)
	}
	return out
}

func (s *testServer) try(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return run(t, append(args, "-socketPath", s.socket)...)
}

var entryIDLine = regexp.MustCompile(`(?m)^Entry ID         : (\S+)$`)

func TestRoundTripEntries(t *testing.T) {
	srv := startServer(t)

	out := srv.cli(t, "healthcheck")
	if out != "Server is healthy.\n" {
		t.Errorf("healthcheck: %q", out)
	}

	out = srv.cli(t, "entry", "create",
		"-spiffeID", "spiffe://example.org/web",
		"-parentID", "spiffe://example.org/node",
		"-selector", "unix:uid:1000",
		"-dns", "web.local",
		"-hint", "frontend")
	for _, want := range []string{
		"SPIFFE ID        : spiffe://example.org/web\n",
		"Parent ID        : spiffe://example.org/node\n",
		"Selector         : unix:uid:1000\n",
		"DNS name         : web.local\n",
		"Hint             : frontend\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("entry create output lacks %q:\n%s", want, out)
		}
	}
	m := entryIDLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no entry ID in:\n%s", out)
	}
	id := m[1]

	// The same entry again is refused, and the CLI says which and why.
	code, _, errOut := srv.try(t, "entry", "create",
		"-spiffeID", "spiffe://example.org/web",
		"-parentID", "spiffe://example.org/node",
		"-selector", "unix:uid:1000")
	if code != 1 || !strings.Contains(errOut, "Failed to create the following entry (code: AlreadyExists") ||
		!strings.Contains(errOut, "SPIFFE ID        : spiffe://example.org/web") {
		t.Errorf("duplicate create: exit %d, stderr:\n%s", code, errOut)
	}

	out = srv.cli(t, "entry", "create", "-node",
		"-spiffeID", "spiffe://example.org/cluster/demo",
		"-selector", "k8s_psat:cluster:demo")
	if !strings.Contains(out, "Parent ID        : spiffe://example.org/spire/server\n") {
		t.Errorf("node entry parent:\n%s", out)
	}

	out = srv.cli(t, "entry", "show", "-spiffeID", "spiffe://example.org/web")
	if !strings.HasPrefix(out, "Found 1 entry\n") || !strings.Contains(out, "Entry ID         : "+id+"\n") {
		t.Errorf("entry show:\n%s", out)
	}
	out = srv.cli(t, "entry", "show", "-selector", "unix:uid:1000", "-matchSelectorsOn", "exact")
	if !strings.HasPrefix(out, "Found 1 entry\n") {
		t.Errorf("entry show by selector:\n%s", out)
	}
	out = srv.cli(t, "entry", "show")
	if !strings.HasPrefix(out, "Found 2 entries\n") {
		t.Errorf("entry show all:\n%s", out)
	}
	out = srv.cli(t, "entry", "count")
	if out != "2 registration entries\n" {
		t.Errorf("entry count: %q", out)
	}

	out = srv.cli(t, "entry", "show", "-entryID", id, "-output", "json")
	var list entryv1.ListEntriesResponse
	if err := protojson.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("json output is not a ListEntriesResponse: %v\n%s", err, out)
	}
	if len(list.Entries) != 1 || list.Entries[0].Id != id || list.Entries[0].SpiffeId.GetPath() != "/web" {
		t.Errorf("json entries: %v", list.Entries)
	}
	if !strings.Contains(out, `"spiffe_id"`) {
		t.Errorf("json output should use proto field names: %s", out)
	}

	out = srv.cli(t, "entry", "update", "-entryID", id,
		"-spiffeID", "spiffe://example.org/web",
		"-parentID", "spiffe://example.org/node",
		"-selector", "unix:uid:2000",
		"-x509SVIDTTL", "120")
	if !strings.Contains(out, "Selector         : unix:uid:2000\n") || !strings.Contains(out, "X509-SVID TTL    : 120\n") ||
		strings.Contains(out, "uid:1000") {
		t.Errorf("entry update:\n%s", out)
	}
	out = srv.cli(t, "entry", "show", "-entryID", id)
	if !strings.Contains(out, "Selector         : unix:uid:2000\n") {
		t.Errorf("update not stored:\n%s", out)
	}

	code, _, errOut = srv.try(t, "entry", "update", "-entryID", "no-such-entry",
		"-spiffeID", "spiffe://example.org/web", "-parentID", "spiffe://example.org/node", "-selector", "unix:uid:1")
	if code != 1 || !strings.Contains(errOut, "Failed to update the following entry (code: NotFound") {
		t.Errorf("update of missing entry: exit %d\n%s", code, errOut)
	}

	out = srv.cli(t, "entry", "delete", "-entryID", id)
	if out != "Deleted entry with ID: "+id+"\n" {
		t.Errorf("entry delete: %q", out)
	}
	code, _, errOut = srv.try(t, "entry", "show", "-entryID", id)
	if code != 1 || !strings.Contains(errOut, "(code: NotFound)") {
		t.Errorf("show of deleted entry: exit %d, %q", code, errOut)
	}
	code, _, errOut = srv.try(t, "entry", "delete", "-entryID", id)
	if code != 1 || !strings.Contains(errOut, "Failed to delete entry with ID "+id+" (code: NotFound") {
		t.Errorf("second delete: exit %d, %q", code, errOut)
	}

	// -data batch form.
	data := filepath.Join(t.TempDir(), "entries.json")
	if err := os.WriteFile(data, []byte(`{"entries": [
		{"spiffe_id": "spiffe://example.org/batch/a", "parent_id": "spiffe://example.org/node", "selectors": [{"type": "unix", "value": "uid:1"}]},
		{"spiffe_id": "spiffe://example.org/batch/b", "parent_id": "spiffe://example.org/node", "selectors": [{"type": "unix", "value": "uid:2"}]}
	]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	out = srv.cli(t, "entry", "create", "-data", data)
	if strings.Count(out, "Entry ID") != 2 {
		t.Errorf("batch create:\n%s", out)
	}
	if out = srv.cli(t, "entry", "count", "-parentID", "spiffe://example.org/node"); out != "2 registration entries\n" {
		t.Errorf("count after batch: %q", out)
	}
}

func TestRoundTripTokenAndAgents(t *testing.T) {
	srv := startServer(t)
	out := srv.cli(t, "token", "generate", "-ttl", "60")
	if !regexp.MustCompile(`^Token: \S{16,}\n$`).MatchString(out) {
		t.Errorf("token generate: %q", out)
	}
	out = srv.cli(t, "token", "generate", "-spiffeID", "spiffe://example.org/edge/device1")
	tok := strings.TrimSpace(strings.TrimPrefix(out, "Token: "))
	// -spiffeID makes the server register an alias entry for the token's agent.
	out = srv.cli(t, "entry", "show", "-spiffeID", "spiffe://example.org/edge/device1")
	if !strings.HasPrefix(out, "Found 1 entry\n") ||
		!strings.Contains(out, "Parent ID        : spiffe://example.org/spire/agent/join_token/"+tok+"\n") {
		t.Errorf("alias entry for token:\n%s", out)
	}

	if out = srv.cli(t, "agent", "list"); out != "Found 0 attested agents:\n\n" {
		t.Errorf("agent list: %q", out)
	}
	if out = srv.cli(t, "agent", "count"); out != "0 attested agents\n" {
		t.Errorf("agent count: %q", out)
	}
	code, _, errOut := srv.try(t, "agent", "show", "-spiffeID", "spiffe://example.org/spire/agent/x")
	if code != 1 || !strings.Contains(errOut, "(code: NotFound)") {
		t.Errorf("agent show of unknown agent: exit %d %q", code, errOut)
	}
}

func TestRoundTripBundlesAndMint(t *testing.T) {
	srv := startServer(t)
	roots := srv.srv.Admin(t).BundleCerts(t)

	out := srv.cli(t, "bundle", "show")
	var got []*x509.Certificate
	for rest := []byte(out); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, c)
	}
	if len(got) != len(roots) || len(got) == 0 || !got[0].Equal(roots[0]) {
		t.Fatalf("bundle show returned %d certs, CA has %d", len(got), len(roots))
	}

	out = srv.cli(t, "bundle", "show", "-format", "spiffe")
	td := spiffeid.RequireTrustDomainFromString("example.org")
	sb, err := spiffebundle.Parse(td, []byte(out))
	if err != nil {
		t.Fatalf("bundle show -format spiffe: %v\n%s", err, out)
	}
	if len(sb.JWTAuthorities()) == 0 {
		t.Errorf("server bundle has no JWT authorities:\n%s", out)
	}

	// Federated bundle life cycle.
	other := testCert(t, "other.org")
	path := filepath.Join(t.TempDir(), "other.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: other.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	if out = srv.cli(t, "bundle", "set", "-id", "spiffe://other.org", "-path", path); out != "bundle set.\n" {
		t.Errorf("bundle set: %q", out)
	}
	out = srv.cli(t, "bundle", "list")
	if !strings.HasPrefix(out, "****************************************\n* spiffe://other.org\n") || !strings.Contains(out, "BEGIN CERTIFICATE") {
		t.Errorf("bundle list:\n%s", out)
	}
	out = srv.cli(t, "bundle", "list", "-id", "other.org", "-format", "spiffe")
	if _, err := spiffebundle.Parse(spiffeid.RequireTrustDomainFromString("other.org"), []byte(out)); err != nil {
		t.Errorf("bundle list -id -format spiffe: %v\n%s", err, out)
	}
	// Ours and other.org's, as spire-server's bundle count says it.
	if out = srv.cli(t, "bundle", "count"); out != "2 bundles\n" {
		t.Errorf("bundle count: %q", out)
	}
	if out = srv.cli(t, "bundle", "count", "-output", "json"); strings.TrimSpace(out) != `{"count":2}` {
		t.Errorf("bundle count -output json: %q", out)
	}
	if out = srv.cli(t, "bundle", "delete", "-id", "spiffe://other.org"); out != "bundle deleted.\n" {
		t.Errorf("bundle delete: %q", out)
	}
	if out = srv.cli(t, "bundle", "list"); out != "" {
		t.Errorf("bundle list after delete: %q", out)
	}
	code, _, errOut := srv.try(t, "bundle", "list", "-id", "other.org")
	if code != 1 || !strings.Contains(errOut, "(code: NotFound)") {
		t.Errorf("list of deleted bundle: exit %d %q", code, errOut)
	}

	// x509 mint writes an SVID that verifies against the server bundle.
	dir := filepath.Join(t.TempDir(), "minted")
	out = srv.cli(t, "x509", "mint", "-spiffeID", "spiffe://example.org/minted", "-dns", "minted.local", "-ttl", "10m", "-write", dir)
	if !strings.Contains(out, "X509-SVID written to "+filepath.Join(dir, "svid.pem")) {
		t.Errorf("x509 mint output: %q", out)
	}
	svid, err := x509svid.Load(filepath.Join(dir, "svid.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := x509bundle.Load(td, filepath.Join(dir, "bundle.pem"))
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := x509svid.Verify(svid.Certificates, bundle)
	if err != nil {
		t.Fatalf("minted SVID does not verify: %v", err)
	}
	if id.String() != "spiffe://example.org/minted" || svid.Certificates[0].DNSNames[0] != "minted.local" {
		t.Errorf("minted SVID: %s %v", id, svid.Certificates[0].DNSNames)
	}
	st, err := os.Stat(filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key.pem mode %v, want 0600", st.Mode().Perm())
	}

	// Without -write everything goes to stdout.
	out = srv.cli(t, "x509", "mint", "-spiffeID", "spiffe://example.org/minted")
	for _, want := range []string{"X509-SVID:\n-----BEGIN CERTIFICATE", "Private key:\n-----BEGIN PRIVATE KEY", "Root CAs:\n-----BEGIN CERTIFICATE"} {
		if !strings.Contains(out, want) {
			t.Errorf("x509 mint stdout lacks %q", want)
		}
	}

	// jwt mint returns a token valid for the audience under the server's keys.
	out = srv.cli(t, "jwt", "mint", "-spiffeID", "spiffe://example.org/minted", "-audience", "db", "-audience", "cache")
	token := strings.TrimSpace(out)
	jsvid, err := jwtsvid.ParseAndValidate(token, sb, []string{"db"})
	if err != nil {
		t.Fatalf("minted JWT-SVID does not validate: %v", err)
	}
	if jsvid.ID.String() != "spiffe://example.org/minted" || len(jsvid.Audience) != 2 {
		t.Errorf("minted JWT: %s %v", jsvid.ID, jsvid.Audience)
	}
	tokenPath := filepath.Join(t.TempDir(), "token")
	srv.cli(t, "jwt", "mint", "-spiffeID", "spiffe://example.org/minted", "-audience", "db", "-write", tokenPath)
	if b, err := os.ReadFile(tokenPath); err != nil || len(b) == 0 {
		t.Errorf("token file: %v %d bytes", err, len(b))
	}
}

func TestRoundTripHealthcheckNotServing(t *testing.T) {
	srv := startUnhealthy(t)
	code, out, errOut := srv.try(t, "healthcheck")
	if code != 1 || out != "" || !strings.Contains(errOut, "server is unhealthy") {
		t.Errorf("not serving: exit %d stdout %q stderr %q", code, out, errOut)
	}
	// -shallow only asks that the server answers.
	if out := srv.cli(t, "healthcheck", "-shallow"); out != "Server is healthy.\n" {
		t.Errorf("shallow: %q", out)
	}
}

// TestRoundTripSelectorChecks: a selector of a type Sigil does not know is
// stored with a warning naming the known types; SPIRE's types Sigil will
// implement are stored silently; an impossible one is refused before the
// server is asked, also from a -data file.
func TestRoundTripSelectorChecks(t *testing.T) {
	srv := startServer(t)
	code, out, errOut := srv.try(t, "entry", "create", "-spiffeID", "spiffe://example.org/a",
		"-parentID", "spiffe://example.org/node", "-selector", "unixx:uid:1")
	if code != 0 || !strings.Contains(out, "Selector         : unixx:uid:1") ||
		!strings.Contains(errOut, `Warning: -selector "unixx:uid:1": unknown selector type "unixx" (known types: aws_iid,`) ||
		!strings.Contains(errOut, "unix, windows, x509pop)") {
		t.Errorf("unknown type: exit %d\nstdout %s\nstderr %s", code, out, errOut)
	}
	code, out, errOut = srv.try(t, "entry", "create", "-spiffeID", "spiffe://example.org/b",
		"-parentID", "spiffe://example.org/node", "-selector", "k8s:ns:default", "-selector", "docker:label:app:web",
		"-x509SVIDTTL", "2h", "-jwtSVIDTTL", "300")
	if code != 0 || errOut != "" || !strings.Contains(out, "X509-SVID TTL    : 7200") || !strings.Contains(out, "JWT-SVID TTL     : 300") {
		t.Errorf("SPIRE types and duration TTL: exit %d\nstdout %s\nstderr %s", code, out, errOut)
	}

	data := filepath.Join(t.TempDir(), "entries.json")
	if err := os.WriteFile(data, []byte(`{"entries": [
		{"spiffe_id": "spiffe://example.org/c", "parent_id": "spiffe://example.org/node", "selectors": [{"type": "unix", "value": "uid:1"}]},
		{"spiffe_id": "spiffe://example.org/d", "parent_id": "spiffe://example.org/node", "selectors": [{"type": "unix", "value": "uid:abc"}]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut = srv.try(t, "entry", "create", "-data", data)
	if code != 1 || !strings.Contains(errOut, "entry #2 in "+data+`: selector can never match: WorkloadAttestor "unix" never produces "unix:uid:abc"`) {
		t.Errorf("-data with an impossible selector: exit %d, stderr %s", code, errOut)
	}
	if out := srv.cli(t, "entry", "count"); out != "2 registration entries\n" {
		t.Errorf("after the refused -data file: %q, want the 2 entries from before (nothing of the file created)", out)
	}
}

// TestRoundTripSPIREOutputs: outputs that must look like the SPIRE CLI's
// (found by test/interop against a real spire-server): a failed create
// shows the entry that was asked for, not the one the server returns for
// AlreadyExists; bundle delete sends the -id as given, so its JSON result
// echoes it; x509 mint -output json has SPIRE's shape (base64 DER lists and
// a base64 PKCS#8 key).
func TestRoundTripSPIREOutputs(t *testing.T) {
	srv := startServer(t)
	srv.cli(t, "entry", "create", "-parentID", "spiffe://example.org/node", "-spiffeID", "spiffe://example.org/web",
		"-selector", "unix:uid:1", "-x509SVIDTTL", "600")
	code, _, errOut := srv.try(t, "entry", "create", "-parentID", "spiffe://example.org/node", "-spiffeID", "spiffe://example.org/web",
		"-selector", "unix:uid:1")
	if code != 1 || !strings.Contains(errOut, "code: AlreadyExists") || !strings.Contains(errOut, "Entry ID         : (none)\n") ||
		!strings.Contains(errOut, "X509-SVID TTL    : default\n") {
		t.Errorf("failed create does not show the requested entry: exit %d\n%s", code, errOut)
	}
	code, out, _ := srv.try(t, "entry", "create", "-output", "json", "-parentID", "spiffe://example.org/node",
		"-spiffeID", "spiffe://example.org/web", "-selector", "unix:uid:1")
	var created entryv1.BatchCreateEntryResponse
	if err := protojson.Unmarshal([]byte(out), &created); err != nil || code != 1 {
		t.Fatalf("failed create -output json: exit %d, %v\n%s", code, err, out)
	}
	if e := created.GetResults()[0].GetEntry(); e.GetId() != "" || e.GetX509SvidTtl() != 0 {
		t.Errorf("failed create -output json shows %v, want the requested entry", e)
	}

	other := testCert(t, "other.org")
	path := filepath.Join(t.TempDir(), "other.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: other.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	srv.cli(t, "bundle", "set", "-id", "spiffe://other.org", "-path", path)
	out = srv.cli(t, "bundle", "delete", "-id", "spiffe://other.org", "-output", "json")
	if !strings.Contains(out, `"trust_domain":"spiffe://other.org"`) && !strings.Contains(out, `"trust_domain": "spiffe://other.org"`) {
		t.Errorf("bundle delete -output json does not echo the -id as given:\n%s", out)
	}

	out = srv.cli(t, "x509", "mint", "-spiffeID", "spiffe://example.org/minted", "-output", "json")
	var minted struct {
		X509SVID   [][]byte `json:"x509_svid"`
		PrivateKey []byte   `json:"private_key"`
		RootCAs    [][]byte `json:"root_cas"`
	}
	if err := json.Unmarshal([]byte(out), &minted); err != nil || len(minted.X509SVID) == 0 || len(minted.RootCAs) == 0 {
		t.Fatalf("x509 mint -output json is not SPIRE's shape (%v):\n%s", err, out)
	}
	leaf, err := x509.ParseCertificate(minted.X509SVID[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := x509.ParsePKCS8PrivateKey(minted.PrivateKey); err != nil {
		t.Fatalf("private_key: %v", err)
	}
	root, err := x509.ParseCertificate(minted.RootCAs[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.CheckSignatureFrom(root); err != nil {
		t.Errorf("minted SVID is not signed by the root CA: %v", err)
	}
}

// TestRoundTripSocketFromEnvironment: without -socketPath the CLI finds the
// server's socket as SPIRE's does: -instance in the template of
// SPIRE_SERVER_PRIVATE_SOCKET_TEMPLATE, else SPIRE_SERVER_PRIVATE_SOCKET.
func TestRoundTripSocketFromEnvironment(t *testing.T) {
	srv := startServer(t)
	dir, name := filepath.Split(srv.socket)
	t.Setenv("SPIRE_SERVER_PRIVATE_SOCKET_TEMPLATE", dir+"%i")
	t.Setenv("SPIRE_SERVER_PRIVATE_SOCKET", "")
	if code, out, errOut := run(t, "bundle", "count", "-instance", name); code != 0 || out != "1 bundle\n" {
		t.Errorf("bundle count -instance %s: exit %d, %q %q", name, code, out, errOut)
	}
	if code, _, errOut := run(t, "bundle", "count", "-instance", "nothing-there"); code != 1 || !strings.Contains(errOut, filepath.Join(dir, "nothing-there")) {
		t.Errorf("bundle count -instance of no server: exit %d, %q", code, errOut)
	}
	t.Setenv("SPIRE_SERVER_PRIVATE_SOCKET", srv.socket)
	if code, out, errOut := run(t, "bundle", "count"); code != 0 || out != "1 bundle\n" {
		t.Errorf("bundle count with SPIRE_SERVER_PRIVATE_SOCKET: exit %d, %q %q", code, out, errOut)
	}
}
