package interop

import (
	"bytes"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// cliEnv is one server as the CLI steps see it: IDs differ between
// servers, so steps name them through the env.
type cliEnv struct {
	t      *testing.T
	srv    *testutil.Server
	socket string // the socket the CLI is pointed at (-socketPath)
	dir    string // scratch files of this server's run
	agent  string // the SPIFFE ID of the spire-agent attested for the agent steps
	token  string // a JWT-SVID the agent under test issued (agent CLI steps)
}

func (e *cliEnv) td() string { return "spiffe://" + e.srv.Config.TrustDomain }

// entryID is the ID of the only entry with SPIFFE ID td+path.
func (e *cliEnv) entryID(path string) string {
	e.t.Helper()
	var ids []string
	for _, en := range e.srv.Admin(e.t).ListEntries(e.t) {
		if testutil.IDString(en.GetSpiffeId()) == e.td()+path {
			ids = append(ids, en.GetId())
		}
	}
	if len(ids) != 1 {
		e.t.Errorf("%s: %d entries with SPIFFE ID %s, want 1", e.srv.Name(), len(ids), path)
		return "<missing>"
	}
	return ids[0]
}

// file writes content to name in the env's scratch directory and returns
// its path.
func (e *cliEnv) file(name string, content []byte) string {
	e.t.Helper()
	p := filepath.Join(e.dir, name)
	if err := os.WriteFile(p, content, 0o600); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// cliStep is one command line, run by each CLI against each server.
type cliStep struct {
	args  func(e *cliEnv) []string // after "<command> <subcommand>"; -socketPath is added
	stdin func(e *cliEnv) []byte
	// before runs first, against each server (e.g. to start an agent).
	before func(e *cliEnv)
	// json: stdout is -output json; it is also compared between the two
	// CLIs (as JSON values).
	json bool
	// differs names a deliberate difference (documented in README's SPIRE
	// compatibility section) that tolerate removes from both outputs
	// before they are compared.
	differs  string
	tolerate func(string) string
	// jsonExit: the CLIs' exit codes differ with -output json (README).
	jsonExit bool
}

func fixed(args ...string) func(*cliEnv) []string { return func(*cliEnv) []string { return args } }

// cliResult is what a command did: exit status and normalized output.
type cliResult struct {
	args           string // the command line, normalized; not compared
	code           int
	stdout, stderr string
}

func (r cliResult) String() string {
	return fmt.Sprintf("exit %d\n--- stdout\n%s--- stderr\n%s", r.code, r.stdout, r.stderr)
}

// run runs cli (spire-server or sigil-server) with args against env's
// server.
func run(t *testing.T, cli string, e *cliEnv, step cliStep) cliResult {
	t.Helper()
	args := step.args(e)
	// The socket flag goes after the (sub)commands ("entry show",
	// "api fetch x509"), as both CLIs take it.
	n := 0
	for n < len(args) && !strings.HasPrefix(args[n], "-") {
		n++
	}
	argv := append(append(append([]string{}, args[:n]...), "-socketPath", e.socket), args[n:]...)
	cmd := exec.Command(cli, argv...)
	cmd.Dir = e.dir
	if step.stdin != nil {
		cmd.Stdin = bytes.NewReader(step.stdin(e))
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %s %v: %v", filepath.Base(cli), argv, err)
	}
	out := stdout.String()
	if step.json && json.Valid(stdout.Bytes()) {
		out = canonicalJSON(t, out)
	}
	return cliResult{args: normalize(e, strings.Join(args, " ")), code: code, stdout: normalize(e, out), stderr: normalize(e, stderr.String())}
}

// canonicalJSON re-encodes a JSON document with sorted keys and no
// insignificant space, so two encoders of the same value compare equal.
func canonicalJSON(t *testing.T, s string) string {
	t.Helper()
	var v any
	d := json.NewDecoder(strings.NewReader(s))
	d.UseNumber()
	if err := d.Decode(&v); err != nil {
		t.Errorf("-output json printed no JSON (%v):\n%s", err, s)
		return s
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b) + "\n"
}

var (
	reUUID   = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)
	rePEM    = regexp.MustCompile(`-----BEGIN ([A-Z ]+)-----[^-]*-----END [A-Z ]+-----`)
	reJWT    = regexp.MustCompile(`eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+`)
	reTime   = regexp.MustCompile(`\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?( \+0000 UTC|Z)`)
	reBase64 = regexp.MustCompile(`[A-Za-z0-9+/_-]{24,}={0,2}`)
	reNumber = regexp.MustCompile(`\b\d{9,}\b`)
	// "Received 1 svid after 2.69ms" (agent CLIs).
	reDuration = regexp.MustCompile(`\bafter \d+(\.\d+)?(ns|µs|ms|s)\b`)
	reKeyPath  = regexp.MustCompile(`"kid": ?"[^"]*"`)
)

// normalize replaces what differs between two runs of the same command on
// different servers (IDs, tokens, keys, certificates, times, serial
// numbers, scratch paths) with placeholders.
func normalize(e *cliEnv, s string) string {
	s = strings.ReplaceAll(s, e.dir, "<dir>")
	s = strings.ReplaceAll(s, e.socket, "<socket>")
	// spire-server prefixes its datastore's messages.
	s = strings.ReplaceAll(s, "datastore-sql: ", "")
	s = rePEM.ReplaceAllString(s, "<pem $1>")
	s = reJWT.ReplaceAllStringFunc(s, jwtShape)
	s = reUUID.ReplaceAllString(s, "<uuid>")
	s = reTime.ReplaceAllString(s, "<time>")
	s = reKeyPath.ReplaceAllString(s, `"kid":"<kid>"`)
	s = reBase64.ReplaceAllStringFunc(s, func(m string) string {
		// Random base64 has digits and capitals; words and paths
		// ("org/spire/agent/join_token/") do not.
		if strings.ContainsAny(m, "0123456789") && strings.ContainsAny(m, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") {
			return "<b64>"
		}
		return m
	})
	s = reNumber.ReplaceAllString(s, "<n>")
	s = reDuration.ReplaceAllString(s, "<duration>")
	return s
}

// jwtShape replaces a JWT with what must be the same from both servers:
// its header's alg and typ, its claims' names and its audience as encoded
// (a JSON string or list).
func jwtShape(tok string) string {
	parts := strings.Split(tok, ".")
	var hdr struct{ Alg, Typ string }
	var claims map[string]json.RawMessage
	h, err1 := base64.RawURLEncoding.DecodeString(parts[0])
	c, err2 := base64.RawURLEncoding.DecodeString(parts[1])
	if err1 != nil || err2 != nil || json.Unmarshal(h, &hdr) != nil || json.Unmarshal(c, &claims) != nil {
		return "<undecodable jwt>"
	}
	var names []string
	for k := range claims {
		names = append(names, k)
	}
	sort.Strings(names)
	return fmt.Sprintf("<jwt alg=%s typ=%s claims=%s aud=%s>", hdr.Alg, hdr.Typ, strings.Join(names, ","), claims["aud"])
}

// TestCLI runs the same command lines with spire-server's CLI and with
// sigil-server's, each against sigil-server's admin socket and against
// spire-server's (-socketPath). Each CLI must print the same thing (after
// normalizing IDs, keys and times) against both servers: the SPIRE CLI
// works unchanged against Sigil, and Sigil's CLI against SPIRE. Commands
// with -output json must also print the same JSON value from both CLIs.
func TestCLI(t *testing.T) {
	spireCLI, _ := testutil.SPIREBinaries(t)
	sigilCLI, _ := testutil.Binaries(t)
	servers := []*testutil.Server{
		testutil.StartServer(t, testutil.ServerConfig{}),
		testutil.StartSPIREServer(t, testutil.ServerConfig{}),
	}
	clis := []struct{ name, bin string }{{"spire-server", spireCLI}, {"sigil-server", sigilCLI}}
	steps := cliSteps()

	// results[cli][server][step]
	results := map[string]map[string][]cliResult{}
	for _, cli := range clis {
		results[cli.name] = map[string][]cliResult{}
		for _, srv := range servers {
			e := &cliEnv{t: t, srv: srv, socket: srv.Config.SocketPath, dir: t.TempDir()}
			var rs []cliResult
			for _, st := range steps {
				if st.before != nil {
					st.before(e)
				}
				rs = append(rs, run(t, cli.bin, e, st))
			}
			results[cli.name][srv.Name()] = rs
			srv.Admin(t).Reset(t)
		}
	}

	compareCLIs(t, steps, results, "spire-server", "sigil-server")
}

// compareCLIs checks the results of the steps (results[cli][target]): each
// CLI printed the same against the Sigil and the SPIRE target, and for
// json steps both CLIs printed the same JSON against each target. Targets
// are named like the CLIs (spire-server, sigil-server or spire-agent,
// sigil-agent).
func compareCLIs(t *testing.T, steps []cliStep, results map[string]map[string][]cliResult, spire, sigil string) {
	t.Helper()
	for i, st := range steps {
		desc := results[spire][spire][i].args
		tolerate := func(r cliResult) string {
			if st.tolerate != nil {
				r.stdout, r.stderr = st.tolerate(r.stdout), st.tolerate(r.stderr)
			}
			return r.String()
		}
		for _, cli := range []string{spire, sigil} {
			a, b := results[cli][sigil][i], results[cli][spire][i]
			if tolerate(a) != tolerate(b) {
				t.Errorf("step %d: %s %s\nagainst %s:\n%s\nagainst %s:\n%s", i, cli, desc, sigil, a, spire, b)
			}
		}
		if !st.json {
			continue
		}
		for _, target := range []string{sigil, spire} {
			a, b := results[spire][target][i], results[sigil][target][i]
			// Only what scripts read: stdout and, unless README documents
			// otherwise, the exit status.
			a.stderr, b.stderr = "", ""
			if st.jsonExit {
				a.code, b.code = 0, 0
			}
			if tolerate(a) != tolerate(b) {
				t.Errorf("step %d: %s against %s: the CLIs' JSON differs\n%s CLI:\n%s\n%s CLI:\n%s", i, desc, target, spire, a, sigil, b)
			}
		}
	}
}

// bundlePEM is a self-signed CA of another trust domain, for bundle set.
func otherBundle(t *testing.T) (pemBytes, jwks []byte) {
	t.Helper()
	other := spiffeid.RequireTrustDomainFromString("other.org")
	ca := testca.New(t, testca.TrustDomain(other), testca.Serial(1), testca.SubjectName(pkix.Name{Organization: []string{"other"}}))
	cert, key := ca.Cert, ca.Key
	b := spiffebundle.New(other)
	b.AddX509Authority(cert)
	if err := b.AddJWTAuthority("other-kid", key.Public()); err != nil {
		t.Fatal(err)
	}
	b.SetSequenceNumber(7)
	b.SetRefreshHint(5 * time.Minute)
	jwks, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return testca.CertsPEM(cert), jwks
}

// seqDiffers: sigil-server's bundle sequence numbers never go back and
// start at 1 (README: SPIRE compatibility).
const seqDiffers = "bundle sequence numbers"

var (
	reSequence = regexp.MustCompile(`,?\s*"spiffe_sequence": \d+|"sequence_number":"\d+"`)
	reRevision = regexp.MustCompile(`(?m)^Revision( *): \d+`)
)

func noSequence(s string) string { return reSequence.ReplaceAllString(s, "") }

// fedStatusDiffers: sigil-server's CLI adds a relationship's refresh
// status where sigil-server reports one (README: Federation).
const fedStatusDiffers = "federation refresh status"

var reFedStatus = regexp.MustCompile(`(?m)^(Refresh status|Bundle last refreshed|Last error|Last error at|Refresh interval|Next attempt|Note) +: .*\n`)

func noFedStatus(s string) string { return reFedStatus.ReplaceAllString(s, "") }

// cliSteps is the script both CLIs run against both servers. It leaves
// the servers as it found them (everything it creates, it deletes), so
// the second CLI sees the same state as the first.
func cliSteps() []cliStep {
	var other struct{ pem, jwks []byte }
	const (
		node = "spiffe://example.org/node"
		web  = "spiffe://example.org/web"
		db   = "spiffe://example.org/db"
	)
	entry := func(path string) func(e *cliEnv) string { return func(e *cliEnv) string { return e.entryID(path) } }
	with := func(fixedArgs []string, f ...func(e *cliEnv) string) func(*cliEnv) []string {
		return func(e *cliEnv) []string {
			out := append([]string{}, fixedArgs...)
			for _, g := range f {
				out = append(out, g(e))
			}
			return out
		}
	}
	agentID := func(e *cliEnv) string { return e.agent }
	return []cliStep{
		{args: fixed("healthcheck")},
		{args: fixed("healthcheck", "-shallow")},
		{args: fixed("healthcheck", "-verbose")},

		// Entries.
		{args: fixed("entry", "create", "-parentID", node, "-spiffeID", web, "-selector", "unix:uid:1000", "-selector", "unix:gid:1000",
			"-x509SVIDTTL", "600", "-jwtSVIDTTL", "300", "-dns", "web.example.org", "-dns", "www.example.org", "-hint", "web")},
		{args: fixed("entry", "create", "-output", "json", "-parentID", node, "-spiffeID", db, "-selector", "unix:uid:1001",
			"-downstream", "-admin", "-entryExpiry", "4102444800"), json: true},
		{args: fixed("entry", "create", "-parentID", node, "-spiffeID", web, "-selector", "unix:uid:1000", "-selector", "unix:gid:1000")},
		{args: fixed("entry", "create", "-output", "json", "-parentID", node, "-spiffeID", web, "-selector", "unix:gid:1000", "-selector", "unix:uid:1000"), json: true,
			jsonExit: true},
		{args: fixed("entry", "count")},
		{args: fixed("entry", "count", "-output", "json"), json: true},
		{args: fixed("entry", "count", "-downstream")},
		{args: fixed("entry", "count", "-selector", "unix:uid:1000")},
		{args: fixed("entry", "show")},
		{args: fixed("entry", "show", "-output", "json"), json: true},
		{args: fixed("entry", "show", "-spiffeID", db)},
		{args: fixed("entry", "show", "-parentID", node, "-output", "json"), json: true},
		{args: fixed("entry", "show", "-downstream")},
		{args: fixed("entry", "show", "-hint", "web")},
		{args: fixed("entry", "show", "-selector", "unix:uid:1000")},
		{args: fixed("entry", "show", "-selector", "unix:uid:1000", "-matchSelectorsOn", "exact")},
		{args: fixed("entry", "show", "-selector", "unix:uid:1000", "-selector", "unix:uid:1001", "-matchSelectorsOn", "any")},
		{args: fixed("entry", "show", "-selector", "unix:uid:1000", "-selector", "unix:gid:1000", "-selector", "unix:uid:7", "-matchSelectorsOn", "subset")},
		{args: with([]string{"entry", "show", "-entryID"}, entry("/web"))},
		{args: with([]string{"entry", "show", "-output", "json", "-entryID"}, entry("/db")), json: true},
		{args: fixed("entry", "show", "-entryID", "00000000-0000-4000-8000-000000000000")},
		{args: with([]string{"entry", "update", "-parentID", node, "-spiffeID", web, "-selector", "unix:uid:1002", "-x509SVIDTTL", "900", "-entryID"}, entry("/web"))},
		{args: with([]string{"entry", "update", "-output", "json", "-parentID", node, "-spiffeID", web, "-selector", "unix:uid:1002", "-hint", "h2", "-entryID"}, entry("/web")), json: true},
		{args: fixed("entry", "update", "-parentID", node, "-spiffeID", web, "-selector", "unix:uid:1002", "-entryID", "00000000-0000-4000-8000-000000000000"),
			differs: "sigil-server's message says why", tolerate: func(s string) string {
				return strings.ReplaceAll(s, "failed to update entry: entry not found", "failed to update entry")
			}},
		{args: with([]string{"entry", "delete", "-entryID"}, entry("/db"))},
		{args: fixed("entry", "delete", "-entryID", "00000000-0000-4000-8000-000000000000")},
		{args: with([]string{"entry", "delete", "-output", "json", "-entryID"}, entry("/web")), json: true},
		{args: fixed("entry", "count")},

		// Join tokens.
		{args: fixed("token", "generate")},
		{args: fixed("token", "generate", "-ttl", "600", "-spiffeID", "spiffe://example.org/tokennode")},
		{args: fixed("token", "generate", "-output", "json"), json: true},
		{args: fixed("entry", "show", "-spiffeID", "spiffe://example.org/tokennode")},

		// Agents: a spire-agent attests to each server.
		{args: fixed("agent", "count"), before: func(e *cliEnv) {
			cfg := testutil.AgentFor(e.t, e.srv, "/node", "")
			testutil.StartSPIREAgent(e.t, cfg)
			e.agent = e.srv.Admin(e.t).JoinTokenAgentID(cfg.JoinToken).String()
		}},
		{args: fixed("agent", "count", "-output", "json"), json: true},
		{args: fixed("agent", "list")},
		{args: fixed("agent", "list", "-output", "json"), json: true},
		{args: fixed("agent", "list", "-attestationType", "join_token")},
		{args: fixed("agent", "list", "-attestationType", "x509pop")},
		{args: fixed("agent", "list", "-banned", "false")},
		{args: fixed("agent", "list", "-canReattest", "true")},
		{args: fixed("agent", "list", "-expiresBefore", "2000-01-01 00:00:00 +0000 UTC")},
		{args: with([]string{"agent", "show", "-spiffeID"}, agentID)},
		{args: with([]string{"agent", "show", "-output", "json", "-spiffeID"}, agentID), json: true},
		{args: fixed("agent", "show", "-spiffeID", "spiffe://example.org/spire/agent/join_token/none")},
		{args: with([]string{"agent", "ban", "-spiffeID"}, agentID)},
		{args: fixed("agent", "list", "-banned", "true")},
		{args: fixed("agent", "count", "-banned", "true")},
		{args: with([]string{"agent", "evict", "-spiffeID"}, agentID)},
		{args: with([]string{"agent", "evict", "-spiffeID"}, agentID)},
		{args: fixed("agent", "ban", "-spiffeID", "spiffe://example.org/spire/agent/join_token/none")},
		{args: fixed("agent", "count")},

		// Bundles.
		{args: fixed("bundle", "show")},
		{args: fixed("bundle", "show", "-format", "spiffe"), differs: seqDiffers, tolerate: noSequence},
		{args: fixed("bundle", "show", "-output", "json"), json: true, differs: seqDiffers, tolerate: noSequence},
		{args: fixed("bundle", "list")},
		{args: fixed("bundle", "list", "-output", "json"), json: true},
		{args: func(e *cliEnv) []string {
			if other.pem == nil {
				other.pem, other.jwks = otherBundle(e.t)
			}
			return []string{"bundle", "set", "-id", "spiffe://other.org", "-path", e.file("other.pem", other.pem)}
		}},
		{args: fixed("bundle", "list")},
		{args: fixed("bundle", "list", "-id", "spiffe://other.org", "-format", "spiffe"), differs: seqDiffers, tolerate: noSequence},
		{args: func(e *cliEnv) []string {
			return []string{"bundle", "set", "-id", "spiffe://other.org", "-format", "spiffe", "-path", e.file("other.json", other.jwks)}
		}},
		{args: fixed("bundle", "set", "-id", "spiffe://third.org"), stdin: func(*cliEnv) []byte { return other.pem }},
		{args: fixed("bundle", "count")},
		{args: fixed("bundle", "count", "-output", "json"), json: true},
		{args: fixed("bundle", "list", "-format", "spiffe"), differs: seqDiffers, tolerate: noSequence},
		{args: fixed("bundle", "list", "-output", "json"), json: true, differs: seqDiffers, tolerate: noSequence},
		{args: fixed("bundle", "list", "-id", "spiffe://other.org", "-output", "json"), json: true, differs: seqDiffers, tolerate: noSequence},
		{args: fixed("bundle", "set", "-id", "spiffe://example.org"), stdin: func(*cliEnv) []byte { return other.pem }},
		{args: fixed("entry", "create", "-parentID", node, "-spiffeID", web, "-selector", "unix:uid:1000", "-federatesWith", "spiffe://other.org")},
		{args: fixed("bundle", "delete", "-id", "spiffe://other.org")},
		{args: fixed("bundle", "delete", "-id", "spiffe://other.org", "-mode", "dissociate")},
		{args: fixed("entry", "show", "-spiffeID", web), differs: "dissociating a bundle is a new revision of the entries that federated with it",
			tolerate: func(s string) string { return reRevision.ReplaceAllString(s, "Revision$1: <n>") }},
		{args: with([]string{"entry", "delete", "-entryID"}, entry("/web"))},
		{args: fixed("bundle", "delete", "-id", "spiffe://third.org", "-output", "json"), json: true},
		{args: fixed("bundle", "delete", "-id", "spiffe://third.org")},
		{args: fixed("bundle", "list")},

		// Federation relationships (their endpoints unreachable: only the
		// records are compared).
		{args: fixed("federation", "list")},
		{args: fixed("federation", "list", "-output", "json"), json: true},
		{args: func(e *cliEnv) []string {
			if other.pem == nil {
				other.pem, other.jwks = otherBundle(e.t)
			}
			return []string{"federation", "create", "-trustDomain", "fed.org", "-bundleEndpointURL", "https://127.0.0.1:1/fed",
				"-bundleEndpointProfile", "https_spiffe", "-endpointSpiffeID", "spiffe://fed.org/spire/server", "-trustDomainBundlePath", e.file("fed.pem", other.pem)}
		}},
		{args: fixed("federation", "create", "-output", "json", "-trustDomain", "web.org", "-bundleEndpointURL", "https://127.0.0.1:1/web",
			"-bundleEndpointProfile", "https_web"), json: true},
		{args: fixed("federation", "create", "-trustDomain", "bad.org", "-bundleEndpointURL", "http://127.0.0.1:1/", "-bundleEndpointProfile", "https_web")},
		{args: fixed("federation", "create", "-trustDomain", "bad.org", "-bundleEndpointURL", "https://127.0.0.1:1/", "-bundleEndpointProfile", "https_mtls")},
		{args: fixed("federation", "list"), differs: fedStatusDiffers, tolerate: noFedStatus},
		{args: fixed("federation", "list", "-output", "json"), json: true, differs: seqDiffers, tolerate: noSequence},
		{args: fixed("federation", "show", "-trustDomain", "fed.org"), differs: fedStatusDiffers, tolerate: noFedStatus},
		{args: fixed("federation", "show", "-trustDomain", "fed.org", "-output", "json"), json: true, differs: seqDiffers, tolerate: noSequence},
		{args: fixed("federation", "show", "-trustDomain", "none.org")},
		{args: fixed("federation", "update", "-trustDomain", "web.org", "-bundleEndpointURL", "https://127.0.0.1:2/web", "-bundleEndpointProfile", "https_web")},
		{args: fixed("federation", "update", "-output", "json", "-trustDomain", "web.org", "-bundleEndpointURL", "https://127.0.0.1:3/web",
			"-bundleEndpointProfile", "https_web"), json: true},
		{args: fixed("federation", "refresh", "-id", "none.org")},
		{args: fixed("federation", "delete", "-id", "web.org")},
		{args: fixed("federation", "delete", "-id", "fed.org", "-output", "json"), json: true},
		{args: fixed("federation", "list")},
		{args: fixed("bundle", "delete", "-id", "spiffe://fed.org")},

		// Minting.
		{args: fixed("x509", "mint", "-spiffeID", "spiffe://example.org/minted", "-ttl", "1h", "-dns", "minted.example.org")},
		{args: fixed("x509", "mint", "-spiffeID", "spiffe://example.org/minted", "-output", "json"), json: true},
		{args: fixed("x509", "mint", "-spiffeID", "spiffe://example.org/minted", "-write", ".")},
		{args: fixed("x509", "mint", "-spiffeID", "spiffe://other.org/minted")},
		{args: fixed("jwt", "mint", "-spiffeID", "spiffe://example.org/minted", "-audience", "a1")},
		{args: fixed("jwt", "mint", "-spiffeID", "spiffe://example.org/minted", "-audience", "a1", "-audience", "a2", "-ttl", "2m", "-output", "json"), json: true},
		{args: fixed("jwt", "mint", "-spiffeID", "spiffe://example.org/minted", "-audience", "a1", "-write", "token.jwt")},
		{args: fixed("jwt", "mint", "-spiffeID", "spiffe://example.org/minted")},
	}
}
