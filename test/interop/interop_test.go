// Package interop checks Sigil against real SPIRE processes: a spire-agent
// attested to sigil-server, a sigil-agent attested to spire-server, the
// spire-server CLI on sigil-server's admin socket and Sigil's CLI on
// spire-server's, and configuration files loaded by both. Every scenario
// runs against both servers and expects the same outcome, so SPIRE's own
// behaviour is the reference.
//
// The tests skip unless SIGIL_SPIRE_BIN names a directory holding
// spire-server and spire-agent (README: SPIRE interoperability tests).
package interop

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/kubetest"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// The Kubernetes API server (kubetest) starts only for the tests that ask.
func TestMain(m *testing.M) { os.Exit(kubetest.Main(m, testutil.Cleanup)) }

// deadline bounds waits for things that take milliseconds against Sigil
// and up to a few SPIRE sync periods (5 s) against SPIRE; tests never
// assert on timing.
const deadline = 60 * time.Second

var uidSelector = "unix:uid:" + strconv.Itoa(os.Getuid())

// serverKind starts one of the two server implementations from the same
// ServerConfig (rendered as the same server.conf).
type serverKind struct {
	name  string
	start func(t testing.TB, cfg testutil.ServerConfig) *testutil.Server
}

var serverKinds = []serverKind{
	{"sigil-server", func(t testing.TB, cfg testutil.ServerConfig) *testutil.Server { return testutil.StartServer(t, cfg) }},
	{"spire-server", testutil.StartSPIREServer},
}

// forEachServer runs f as a subtest against each server implementation.
// Without SPIRE binaries the whole test skips, also its Sigil half: the
// point is the comparison.
func forEachServer(t *testing.T, f func(t *testing.T, srv *testutil.Server)) {
	testutil.SPIREBinaries(t)
	for _, k := range serverKinds {
		t.Run(k.name, func(t *testing.T) {
			f(t, k.start(t, testutil.ServerConfig{}))
		})
	}
}

// checkWorkload fetches an X509-SVID and a JWT-SVID for id through the
// agent's Workload API with go-spiffe, as a workload does, and checks both
// against the bundles the agent serves, and those against the server's.
func checkWorkload(t *testing.T, srv *testutil.Server, agent *testutil.Agent, id spiffeid.ID) {
	t.Helper()
	svid := testutil.RequireSVID(t, agent.SocketAddr(), id, deadline)
	src := testutil.NewX509Source(t, agent.SocketAddr(), testutil.PickID(id))
	if _, _, err := x509svid.Verify(svid.Certificates, src); err != nil {
		t.Fatalf("%s: X509-SVID %s does not verify against the bundle it serves: %v", agent.Name(), id, err)
	}
	// The served bundle is the server's.
	served, err := src.GetX509BundleForTrustDomain(srv.TrustDomain())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, c := range testca.ParseCertsPEM(t, srv.Admin(t).BundlePEM(t)) {
		want[string(c.Raw)] = true
	}
	for _, c := range served.X509Authorities() {
		if !want[string(c.Raw)] {
			t.Fatalf("%s serves an X.509 authority %s is not publishing", agent.Name(), srv.Name())
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(agent.SocketAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	jwt, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "interop", ExtraAudiences: []string{"second"}, Subject: id})
	if err != nil {
		t.Fatalf("%s: JWT-SVID for %s: %v", agent.Name(), id, err)
	}
	bundles, err := client.FetchJWTBundles(ctx)
	if err != nil {
		t.Fatalf("%s: JWT bundles: %v", agent.Name(), err)
	}
	got, err := jwtsvid.ParseAndValidate(jwt.Marshal(), bundles, []string{"second"})
	if err != nil {
		t.Fatalf("%s: JWT-SVID does not validate against the JWT bundle it serves: %v", agent.Name(), err)
	}
	if got.ID != id {
		t.Fatalf("%s: JWT-SVID subject %s, want %s", agent.Name(), got.ID, id)
	}
	// The Workload API's own validation (ValidateJWTSVID) agrees.
	if _, err := client.ValidateJWTSVID(ctx, jwt.Marshal(), "interop"); err != nil {
		t.Fatalf("%s: ValidateJWTSVID: %v", agent.Name(), err)
	}
}

// entriesWithParent lists the server's entries whose parent is id.
func entriesWithParent(t *testing.T, adm *testutil.Admin, id spiffeid.ID) []*types.Entry {
	t.Helper()
	var out []*types.Entry
	for _, e := range adm.ListEntries(t) {
		if testutil.IDString(e.GetParentId()) == id.String() {
			out = append(out, e)
		}
	}
	return out
}

// findAgent returns the server's record of agent id, nil if it lists none.
func findAgent(t *testing.T, adm *testutil.Admin, id spiffeid.ID) *types.Agent {
	t.Helper()
	for _, a := range adm.ListAgents(t) {
		if testutil.IDString(a.GetId()) == id.String() {
			return a
		}
	}
	return nil
}

// serverCLI runs the server's own CLI (sigil-server's or spire-server's)
// against its admin socket, as an operator would, e.g. "agent", "ban",
// "-spiffeID", id; it fails the test unless the command succeeds.
func serverCLI(t *testing.T, srv *testutil.Server, args ...string) string {
	t.Helper()
	argv := append(append(append([]string{}, args[:2]...), "-socketPath", srv.Config.SocketPath), args[2:]...)
	out, err := exec.Command(srv.Bin(), argv...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", srv.Name(), strings.Join(argv, " "), err, out)
	}
	return string(out)
}
