package e2e

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// agentSelectors returns an agent record's selectors as type:value, sorted.
func agentSelectors(a *types.Agent) []string {
	var out []string
	for _, s := range a.GetSelectors() {
		out = append(out, s.GetType()+":"+s.GetValue())
	}
	slices.Sort(out)
	return out
}

// TestX509PoPAttestation: a device provisioned with a certificate from a
// device CA (through an intermediate it sends) attests to a real
// sigil-server with x509pop, beside join_token; the server records it
// under its certificate's fingerprint with SPIRE's selectors, and an alias
// entry on x509pop:subject:cn gives its workload an identity.
func TestX509PoPAttestation(t *testing.T) {
	ca := testutil.NewDeviceCA(t, testutil.ShortTempDir(t))
	srv := testutil.StartServer(t, testutil.ServerConfig{Plugins: []testutil.Plugin{ca.ServerPlugin()}})
	adm := srv.Admin(t)

	na, cert := ca.Device(t, testutil.ShortTempDir(t), "device-1", testca.Serial(0x1f2e))
	cfg := testutil.AgentWith(t, srv, "", na)
	alias := srv.ID("/devices/device-1")
	adm.CreateEntry(t, alias, srv.ID("/spire/server"), "x509pop:subject:cn:device-1")
	web := srv.ID("/web")
	adm.CreateEntry(t, web, alias, uidSelector)

	agent := testutil.StartAgent(t, cfg)
	testutil.RequireSVID(t, agent.SocketAddr(), web, deadline)

	wantID := testutil.X509PoPAgentID(srv.TrustDomain(), cert)
	var rec *types.Agent
	for _, a := range adm.ListAgents(t) {
		if testutil.IDString(a.GetId()) == wantID.String() {
			rec = a
		}
	}
	if rec == nil {
		t.Fatalf("the server lists no agent %s", wantID)
	}
	if rec.GetAttestationType() != "x509pop" || !rec.GetCanReattest() {
		t.Errorf("agent record: attestation type %q, can re-attest %v", rec.GetAttestationType(), rec.GetCanReattest())
	}
	want := []string{
		"x509pop:ca:fingerprint:" + testutil.Fingerprint(ca.Issuer.Cert),
		"x509pop:ca:fingerprint:" + testutil.Fingerprint(ca.Root.Cert),
		"x509pop:serialnumber:1f2e",
		"x509pop:subject:cn:device-1",
	}
	slices.Sort(want)
	if got := agentSelectors(rec); !slices.Equal(got, want) {
		t.Errorf("agent selectors\n got %q\nwant %q", got, want)
	}
}

// TestX509PoPReattestation: an x509pop agent renews its SVID by attesting
// again (short agent_ttl), reading its device files anew each time. With
// agent_path_template on the common name its agent ID survives a device
// certificate rotated on disk: the server's record takes the new
// certificate's serial. When the device certificate on disk has expired,
// the next re-attestation is refused: the agent serves no identity (503
// revoked, workload PermissionDenied) and logs why; it keeps trying, and
// a valid certificate put back gets it its identity again.
func TestX509PoPReattestation(t *testing.T) {
	const wait = 90 * time.Second // a few agent SVID half-lives, on a loaded machine
	ca := testutil.NewDeviceCA(t, testutil.ShortTempDir(t))
	plugin := ca.ServerPlugin()
	plugin.Data["agent_path_template"] = "/x509pop/{{ .Subject.CommonName }}"
	srv := testutil.StartServer(t, testutil.ServerConfig{AgentTTL: 10 * time.Second, X509SVIDTTL: time.Minute, Plugins: []testutil.Plugin{plugin}})
	adm := srv.Admin(t)
	devDir := testutil.ShortTempDir(t)
	na, cert := ca.Device(t, devDir, "device-1")
	alias := srv.ID("/devices/device-1")
	adm.CreateEntry(t, alias, srv.ID("/spire/server"), "x509pop:subject:cn:device-1")
	web := srv.ID("/web")
	adm.CreateEntry(t, web, alias, uidSelector)
	cfg := testutil.AgentWith(t, srv, "", na)
	port, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg.HealthPort = port
	agent := testutil.StartAgent(t, cfg)
	testutil.RequireSVID(t, agent.SocketAddr(), web, deadline)
	agentID := srv.ID("/spire/agent/x509pop/device-1")

	serialOnRecord := func() string {
		for _, a := range adm.ListAgents(t) {
			if testutil.IDString(a.GetId()) == agentID.String() {
				for _, s := range agentSelectors(a) {
					if v, ok := strings.CutPrefix(s, "x509pop:serialnumber:"); ok {
						return v
					}
				}
			}
		}
		return ""
	}
	serialHex := func(c interface{ Text(int) string }) string {
		s := c.Text(16)
		if len(s)%2 == 1 {
			s = "0" + s
		}
		return s
	}
	if got, want := serialOnRecord(), serialHex(cert.SerialNumber); got != want {
		t.Fatalf("agent %s on record with serial %q, want %q", agentID, got, want)
	}

	// A new device certificate (and key) on disk is used at the next
	// renewal, without a restart.
	_, rotated := ca.Device(t, devDir, "device-1")
	if err := testutil.Poll(wait, 100*time.Millisecond, func() (bool, error) {
		return serialOnRecord() == serialHex(rotated.SerialNumber), nil
	}); err != nil {
		t.Fatalf("the server never recorded the rotated certificate (serial %s): on record %q", serialHex(rotated.SerialNumber), serialOnRecord())
	}
	testutil.RequireSVID(t, agent.SocketAddr(), web, deadline)

	// An expired device certificate: the next re-attestation is refused.
	ca.Device(t, devDir, "device-1", testca.Expired())
	body := testutil.WaitHTTP(t, "http://127.0.0.1:"+strconv.Itoa(port)+"/ready", http.StatusServiceUnavailable, "revoked:", wait)
	if !strings.Contains(body, "ATTESTATION_REFUSED") && !strings.Contains(body, "refused") {
		t.Errorf("/ready %s does not say the attestation was refused", body)
	}
	agent.Proc.WaitForLog(t, "expired at", deadline)
	if _, err := testutil.FetchX509SVIDs(t.Context(), agent.SocketAddr()); err == nil {
		t.Fatal("the refused agent still serves its workload")
	}

	// A valid certificate again: the agent, still trying, gets back in.
	ca.Device(t, devDir, "device-1")
	testutil.WaitHTTP(t, "http://127.0.0.1:"+strconv.Itoa(port)+"/ready", http.StatusOK, "connected", wait)
	testutil.RequireSVID(t, agent.SocketAddr(), web, deadline)

}
