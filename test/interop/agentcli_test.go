package interop

import (
	"context"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// TestAgentCLI runs the same command lines with spire-agent's CLI and
// sigil-agent's against a sigil-agent's and a spire-agent's Workload API
// socket (both attested to one sigil-server, serving this process the same
// entry): each CLI must print the same against both agents, and with
// -output json both CLIs the same JSON.
func TestAgentCLI(t *testing.T) {
	_, spireCLI := testutil.SPIREBinaries(t)
	_, sigilCLI := testutil.Binaries(t)
	srv := testutil.StartServer(t, testutil.ServerConfig{})
	webID := srv.ID("/web")
	srv.Admin(t).CreateEntry(t, webID, srv.ID("/node"), uidSelector)
	agents := map[string]*testutil.Agent{
		"sigil-agent": testutil.StartAgent(t, testutil.AgentFor(t, srv, "/node", "")),
		"spire-agent": testutil.StartSPIREAgent(t, testutil.AgentFor(t, srv, "/node", "")),
	}
	steps := []cliStep{
		{args: fixed("healthcheck")},
		{args: fixed("healthcheck", "-shallow")},
		{args: fixed("api", "fetch", "x509")},
		{args: fixed("api", "fetch", "x509", "-output", "json"), json: true},
		{args: fixed("api", "fetch", "x509", "-write", ".")},
		{args: fixed("api", "fetch", "jwt", "-audience", "a1"),
			// spire-agent's CLI prints the JWKS bytes the agent serves.
			differs: "JWT bundle JSON layout", tolerate: func(s string) string { return strings.Join(strings.Fields(s), "") }},
		{args: fixed("api", "fetch", "jwt", "-audience", "a1", "-spiffeID", webID.String(), "-output", "json"), json: true},
		{args: fixed("api", "fetch", "jwt", "-audience", "a1", "-spiffeID", "spiffe://example.org/other")},
		{args: func(e *cliEnv) []string {
			return []string{"api", "validate", "jwt", "-audience", "a1", "-svid", e.token}
		}},
		{args: func(e *cliEnv) []string {
			return []string{"api", "validate", "jwt", "-audience", "a1", "-svid", e.token, "-output", "json"}
		}, json: true},
		{args: func(e *cliEnv) []string {
			return []string{"api", "validate", "jwt", "-audience", "a2", "-svid", e.token}
		},
			differs: "error texts of JWT validation", tolerate: func(s string) string { return strings.ReplaceAll(s, "jwtsvid: ", "") }},
	}

	results := map[string]map[string][]cliResult{}
	for cli, bin := range map[string]string{"spire-agent": spireCLI, "sigil-agent": sigilCLI} {
		results[cli] = map[string][]cliResult{}
		for name, a := range agents {
			e := &cliEnv{t: t, srv: srv, socket: a.Config.SocketPath, dir: t.TempDir(), token: jwtFrom(t, a, webID)}
			for _, st := range steps {
				results[cli][name] = append(results[cli][name], run(t, bin, e, st))
			}
		}
	}
	compareCLIs(t, steps, results, "spire-agent", "sigil-agent")
}

// jwtFrom fetches a JWT-SVID for audience a1 from the agent's Workload API.
// The agent serves it once it serves id's X509-SVID.
func jwtFrom(t *testing.T, a *testutil.Agent, id spiffeid.ID) string {
	t.Helper()
	testutil.RequireSVID(t, a.SocketAddr(), id, deadline)
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	svid, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "a1"}, workloadapi.WithAddr(a.SocketAddr()))
	if err != nil {
		t.Fatalf("%s: JWT-SVID: %v", a.Name(), err)
	}
	return svid.Marshal()
}
