package servercli

import (
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	serverapp "github.com/sigil-spiffe/sigil/internal/app/server"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/inproc"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// startFederatingServer is startServer with a bundle endpoint (https_spiffe,
// on a port it returns) and, when peer is not zero, a configuration
// relationship with it.
func startFederatingServer(t *testing.T, td string, port int, peer string, peerPort int) *testServer {
	t.Helper()
	dir := testutil.ShortTempDir(t)
	cfg := inproc.ServerConfig(spiffeid.RequireTrustDomainFromString(td), filepath.Join(dir, "data"), filepath.Join(dir, "api.sock"), 0)
	cfg.Federation = &config.Federation{BundleEndpoint: &config.BundleEndpoint{Address: "127.0.0.1", Port: port, RefreshHint: 5 * time.Second, Profile: config.ProfileHTTPSSPIFFE}}
	if peer != "" {
		u, _ := url.Parse("https://127.0.0.1:" + strconv.Itoa(peerPort))
		ptd := spiffeid.RequireTrustDomainFromString(peer)
		cfg.Federation.FederatesWith = []config.FederatesWith{{TrustDomain: ptd, BundleEndpointURL: u, Profile: config.ProfileHTTPSSPIFFE,
			EndpointSPIFFEID: spiffeid.RequireFromPath(ptd, "/spire/server")}}
	}
	return &testServer{socket: cfg.SocketPath, srv: inproc.RunServer(t, cfg, nil, serverapp.Options{})}
}

func freePort(t *testing.T) int {
	p, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRoundTripFederation(t *testing.T) {
	edgePort, cloudPort := freePort(t), freePort(t)
	// cloud federates with edge through its configuration; edge with
	// cloud through the CLI.
	cloud := startFederatingServer(t, "cloud.test", cloudPort, "edge.test", edgePort)
	edge := startFederatingServer(t, "edge.test", edgePort, "", 0)
	dir := t.TempDir()
	cloudPEM := filepath.Join(dir, "cloud.pem")
	if err := os.WriteFile(cloudPEM, []byte(cloud.cli(t, "bundle", "show")), 0o600); err != nil {
		t.Fatal(err)
	}
	edgePEM := filepath.Join(dir, "edge.pem")
	if err := os.WriteFile(edgePEM, []byte(edge.cli(t, "bundle", "show")), 0o600); err != nil {
		t.Fatal(err)
	}
	cloudURL := "https://127.0.0.1:" + strconv.Itoa(cloudPort)

	out := edge.cli(t, "federation", "create", "-trustDomain", "cloud.test", "-bundleEndpointURL", cloudURL,
		"-bundleEndpointProfile", "https_spiffe", "-endpointSpiffeID", "spiffe://cloud.test/spire/server", "-trustDomainBundlePath", cloudPEM)
	want := "\nTrust domain              : cloud.test\n" +
		"Bundle endpoint URL       : " + cloudURL + "\n" +
		"Bundle endpoint profile   : https_spiffe\n" +
		"Endpoint SPIFFE ID        : spiffe://cloud.test/spire/server\n"
	if out != want {
		t.Errorf("federation create:\n%s\nwant:\n%s", out, want)
	}
	// The bootstrap bundle is the federated bundle.
	if out := edge.cli(t, "bundle", "list", "-id", "spiffe://cloud.test"); out != cloud.cli(t, "bundle", "show") {
		t.Errorf("bundle list -id after create:\n%s", out)
	}
	// edge refreshes from cloud's endpoint, and says so.
	waitForCLI(t, edge, []string{"federation", "show", "-trustDomain", "cloud.test"}, "Refresh status            : ok\n")
	out = edge.cli(t, "federation", "show", "-trustDomain", "cloud.test")
	if !strings.HasPrefix(out, "Found a federation relationship with trust domain cloud.test:\n\n"+want[1:]) ||
		!strings.Contains(out, "Bundle last refreshed     : ") || !strings.Contains(out, "Refresh interval          : 5s\n") || !strings.Contains(out, "Next attempt              : ") {
		t.Errorf("federation show:\n%s", out)
	}

	// cloud: its configuration relationship, bootstrapped with bundle set,
	// shown by list and show though the API lists none.
	cloud.cli(t, "bundle", "set", "-id", "spiffe://edge.test", "-path", edgePEM)
	waitForCLI(t, cloud, []string{"federation", "show", "-trustDomain", "edge.test"}, "Refresh status            : ok\n")
	out = cloud.cli(t, "federation", "list")
	if !strings.HasPrefix(out, "Found 0 federation relationships\n\nand 1 from the server configuration (federates_with; not managed through this API):\n\n"+
		"Trust domain              : edge.test\n") {
		t.Errorf("federation list with a configuration relationship:\n%s", out)
	}
	if out := cloud.cli(t, "federation", "list", "-output", "json"); !strings.Contains(out, `"federation_relationships":[]`) {
		t.Errorf("federation list -output json (as SPIRE's, stored relationships only):\n%s", out)
	}
	if out := cloud.cli(t, "federation", "refresh", "-id", "edge.test"); out != "Bundle refreshed\n" {
		t.Errorf("federation refresh: %q", out)
	}
	code, _, errOut := cloud.try(t, "federation", "show", "-trustDomain", "edge.test", "-output", "json")
	if code != 1 || !strings.Contains(errOut, "federation relationship does not exist") {
		t.Errorf("show -output json of a configuration relationship: exit %d, %s", code, errOut)
	}

	// update, list, json.
	edge.cli(t, "federation", "update", "-trustDomain", "cloud.test", "-bundleEndpointURL", cloudURL+"/",
		"-bundleEndpointProfile", "https_spiffe", "-endpointSpiffeID", "spiffe://cloud.test/spire/server")
	out = edge.cli(t, "federation", "list")
	if !strings.HasPrefix(out, "Found 1 federation relationship\n\nTrust domain              : cloud.test\nBundle endpoint URL       : "+cloudURL+"/\n") {
		t.Errorf("federation list:\n%s", out)
	}
	var listed struct {
		FederationRelationships []struct {
			TrustDomain string `json:"trust_domain"`
			HTTPSSpiffe struct {
				EndpointSpiffeID string `json:"endpoint_spiffe_id"`
			} `json:"https_spiffe"`
		} `json:"federation_relationships"`
	}
	if err := json.Unmarshal([]byte(edge.cli(t, "federation", "list", "-output", "json")), &listed); err != nil ||
		len(listed.FederationRelationships) != 1 || listed.FederationRelationships[0].HTTPSSpiffe.EndpointSpiffeID != "spiffe://cloud.test/spire/server" {
		t.Errorf("federation list -output json: %+v, %v", listed, err)
	}

	// delete; again; refresh and show of what is gone.
	if out := edge.cli(t, "federation", "delete", "-id", "cloud.test"); out != "federation relationship deleted.\n" {
		t.Errorf("federation delete: %q", out)
	}
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"federation", "delete", "-id", "cloud.test"}, `failed to delete federation relationship "cloud.test": federation relationship not found`},
		{[]string{"federation", "refresh", "-id", "cloud.test"}, `there is no federation relationship with trust domain "cloud.test"`},
		{[]string{"federation", "show", "-trustDomain", "cloud.test"}, "federation relationship does not exist (code: NotFound)"},
	} {
		code, _, errOut := edge.try(t, c.args...)
		if code != 1 || !strings.Contains(errOut, c.msg) {
			t.Errorf("%v: exit %d, %q; want %q", c.args, code, errOut, c.msg)
		}
	}
	if out := edge.cli(t, "federation", "list"); out != "Found 0 federation relationships\n" {
		t.Errorf("federation list after delete: %q", out)
	}
}

func waitForCLI(t *testing.T, s *testServer, args []string, substr string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, out, _ := s.try(t, args...)
		if strings.Contains(out, substr) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v never printed %q; last output:\n%s", args, substr, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Bad input through the CLI: refused by the CLI where SPIRE's is, else by
// the server with its status; nothing is created.
func TestFederationBadInput(t *testing.T) {
	srv := startServer(t)
	dir := t.TempDir()
	pemPath := filepath.Join(dir, "peer.pem")
	testca.WriteCertsPEM(t, pemPath, testca.SelfSigned(t, testca.TrustDomain(spiffeid.RequireTrustDomainFromString("peer.test"))))
	base := []string{"federation", "create", "-trustDomain", "peer.test", "-bundleEndpointURL", "https://peer.test"}
	cases := []struct {
		name string
		args []string
		msg  string
	}{
		{"unknown profile", append(base, "-bundleEndpointProfile", "https_mtls"), `unknown bundle endpoint profile type: "https_mtls"`},
		{"no profile", base, `unknown bundle endpoint profile type: ""`},
		{"no endpoint ID", append(base, "-bundleEndpointProfile", "https_spiffe"), "endpoint SPIFFE ID is required"},
		{"no URL", []string{"federation", "create", "-trustDomain", "peer.test", "-bundleEndpointProfile", "https_web"}, "bundle endpoint URL is required"},
		{"no trust domain", []string{"federation", "create"}, "trust domain is required"},
		{"http URL", []string{"federation", "create", "-trustDomain", "peer.test", "-bundleEndpointURL", "http://peer.test", "-bundleEndpointProfile", "https_web"},
			`Failed to create the following federation relationship (code: InvalidArgument, msg: "failed to convert federation relationship: bundle endpoint URL must use the https scheme")`},
		{"endpoint ID in another domain", append(base, "-bundleEndpointProfile", "https_spiffe", "-endpointSpiffeID", "spiffe://other.test/spire/server"),
			`is not in trust domain \"peer.test\"`},
		{"own trust domain", []string{"federation", "create", "-trustDomain", "example.org", "-bundleEndpointURL", "https://x", "-bundleEndpointProfile", "https_web"},
			"unable to create federation relationship for server trust domain"},
		{"bad bundle file", append(base, "-bundleEndpointProfile", "https_web", "-trustDomainBundlePath", filepath.Join(dir, "missing.pem")), "cannot read bundle file"},
		{"bad bundle format", append(base, "-bundleEndpointProfile", "https_web", "-trustDomainBundlePath", pemPath, "-trustDomainBundleFormat", "der"), `unknown -format "der"`},
		{"data with flags", []string{"federation", "create", "-data", pemPath, "-trustDomain", "x.test"}, "cannot use other flags to specify relationship fields when 'data' flag is set"},
		{"data not JSON", []string{"federation", "create", "-data", pemPath}, "failed to parse JSON"},
		{"delete without id", []string{"federation", "delete"}, "id is required"},
		{"refresh without id", []string{"federation", "refresh"}, "id is required"},
		{"show without trust domain", []string{"federation", "show"}, "a trust domain name is required"},
	}
	for _, c := range cases {
		code, out, errOut := srv.try(t, c.args...)
		if code != 1 || !strings.Contains(errOut, c.msg) {
			t.Errorf("%s: exit %d\nstdout: %s\nstderr: %s\nwant %q", c.name, code, out, errOut, c.msg)
		}
	}
	// A duplicate.
	srv.cli(t, append(base, "-bundleEndpointProfile", "https_web")...)
	code, _, errOut := srv.try(t, append(base, "-bundleEndpointProfile", "https_web")...)
	if code != 1 || !strings.Contains(errOut, `(code: AlreadyExists, msg: "federation relationship already exists")`) {
		t.Errorf("duplicate: exit %d, %s", code, errOut)
	}
	if out := srv.cli(t, "federation", "list"); !strings.HasPrefix(out, "Found 1 federation relationship\n") {
		t.Errorf("after refused creates:\n%s", out)
	}
}

// -data: SPIRE's JSON, bundles in pem (a JSON string) or spiffe (a JSON
// document) format, from a file or stdin.
func TestFederationDataFile(t *testing.T) {
	srv := startServer(t)
	peerTD := spiffeid.RequireTrustDomainFromString("peer.test")
	ca := testca.New(t, testca.TrustDomain(peerTD))
	pemBundle, _ := json.Marshal(string(testca.CertsPEM(ca.Cert)))
	spiffeBundle, err := ca.Bundle().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	doc := `{"federationRelationships": [
  {"trustDomain": "peer.test", "bundleEndpointURL": "https://peer.test:8443", "bundleEndpointProfile": "https_spiffe",
   "endpointSPIFFEID": "spiffe://peer.test/spire/server", "trustDomainBundle": ` + string(pemBundle) + `, "trustDomainBundleFormat": "pem"},
  {"trustDomain": "spiffe.test", "bundleEndpointURL": "https://spiffe.test", "bundleEndpointProfile": "https_web",
   "trustDomainBundle": ` + strings.ReplaceAll(string(spiffeBundle), `"peer.test"`, `"spiffe.test"`) + `, "trustDomainBundleFormat": "spiffe"},
  {"trustDomain": "web.test", "bundleEndpointURL": "https://web.test", "bundleEndpointProfile": "https_web"}
]}`
	path := filepath.Join(t.TempDir(), "rels.json")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	out := srv.cli(t, "federation", "create", "-data", path)
	if strings.Count(out, "Trust domain              : ") != 3 {
		t.Fatalf("create -data:\n%s", out)
	}
	if out := srv.cli(t, "bundle", "list", "-id", "peer.test"); out != string(testca.CertsPEM(ca.Cert)) {
		t.Errorf("pem bundle from -data:\n%s", out)
	}
	if out := srv.cli(t, "bundle", "list", "-id", "spiffe.test"); out != string(testca.CertsPEM(ca.Cert)) {
		t.Errorf("spiffe bundle from -data:\n%s", out)
	}
	// Update from stdin.
	stdin = strings.NewReader(`{"federationRelationships": [{"trustDomain": "web.test", "bundleEndpointURL": "https://web.test:9443", "bundleEndpointProfile": "https_web"}]}`)
	t.Cleanup(func() { stdin = os.Stdin })
	srv.cli(t, "federation", "update", "-data", "-")
	if out := srv.cli(t, "federation", "show", "-trustDomain", "web.test"); !strings.Contains(out, "Bundle endpoint URL       : https://web.test:9443\n") {
		t.Errorf("after update from stdin:\n%s", out)
	}
}
