package manager_test

import (
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/agent/manager"
	"github.com/sigil-spiffe/sigil/internal/attest/node/x509pop"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// x509popDevice is a server trusting a device CA and the agent half of
// NodeAttestor "x509pop" for one device whose files are in dir.
type x509popDevice struct {
	srv      *testServer
	attestor *x509pop.Agent
	certPath string
	agentID  spiffeid.ID
}

func newX509PoPDevice(t *testing.T, clk clock.Clock) *x509popDevice {
	t.Helper()
	dir := t.TempDir()
	ca := testutil.NewDeviceCA(t, dir)
	sa, err := x509pop.NewServer(x509pop.ServerConfig{CABundlePath: ca.BundlePath}, x509pop.ServerOptions{TrustDomain: td, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	srv := newTestServer(t, serverOpts{clock: clk, attestors: map[string]serverAttestor{x509pop.Type: sa}})
	plugin, cert := ca.Device(t, dir, "device-1", testca.NotAfter(time.Now().Add(24*time.Hour)))
	cfg := x509pop.AgentConfig{
		CertificatePath:   plugin.Data["certificate_path"].(string),
		PrivateKeyPath:    plugin.Data["private_key_path"].(string),
		IntermediatesPath: plugin.Data["intermediates_path"].(string),
	}
	a, err := x509pop.NewAgent(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &x509popDevice{srv: srv, attestor: a, certPath: cfg.CertificatePath, agentID: testutil.X509PoPAgentID(td, cert)}
}

// serverBlamed lists the log lines that put a failure on the server.
func serverBlamed(rec *logRecorder) []string {
	var out []string
	for _, lvl := range []slog.Level{slog.LevelWarn, slog.LevelError} {
		for _, r := range rec.find(lvl, "") {
			if strings.Contains(r.Message, "server is unreachable") || strings.Contains(r.Message, "Server session ended") {
				out = append(out, r.Message)
			}
		}
	}
	return out
}

// TestLocalAttestationFailure: a real x509pop agent whose device
// certificate disappears cannot re-attest at its renewal. That is a
// failure on this host, not of the server: the agent logs the attestor
// and its error, the degraded and then expired states say a plugin fails
// on this host (Status.FailedPlugin), and nothing blames the server. Once
// the file is back, the agent attests and serves again.
func TestLocalAttestationFailure(t *testing.T) {
	clk := clock.NewFake(time.Now())
	d := newX509PoPDevice(t, clk)
	wl := spiffeid.RequireFromPath(td, "/workload/device")
	d.srv.createEntry(d.agentID, wl.Path(), "7100")
	rec := &logRecorder{}
	a := startAgent(t, d.srv, t.TempDir(), agentOpts{attestor: d.attestor, clock: clk, log: slog.New(rec)})
	a.waitIdentity("7100", wl)
	eventually(t, "connected state", func() bool { return a.m.Status().State == manager.StateConnected })

	if err := os.Rename(d.certPath, d.certPath+".away"); err != nil {
		t.Fatal(err)
	}
	// Past the agent SVID's half-life (1h TTL): it re-attests, and cannot.
	clk.Add(31 * time.Minute)
	var failure slog.Record
	eventually(t, "the local failure logged", func() bool {
		w := rec.find(slog.LevelWarn, "Could not attest: the node attestor failed on this host (not the server)")
		if len(w) > 0 {
			failure = w[0]
		}
		return len(w) > 0
	})
	if p := attr(failure, "failed_plugin").String(); p != `NodeAttestor "x509pop"` {
		t.Errorf("failed_plugin %q", p)
	}
	if e := attr(failure, "error").String(); !strings.Contains(e, d.certPath) {
		t.Errorf("error %q does not name the missing file", e)
	}
	eventually(t, "degraded for a local reason", func() bool {
		return len(rec.find(slog.LevelWarn, "Agent state: degraded; a plugin fails on this host (not the server)")) == 1
	})
	st := a.m.Status()
	if st.State != manager.StateDegraded || st.FailedPlugin != `NodeAttestor "x509pop"` || !strings.Contains(st.LastError, d.certPath) {
		t.Fatalf("status: state %s, failed plugin %q, last error %q", st.State, st.FailedPlugin, st.LastError)
	}

	// The cached workload SVIDs run out: expired, for the same reason.
	clk.Set(a.m.Status().EarliestSVIDExpiry)
	eventually(t, "expired for a local reason", func() bool {
		r := rec.find(slog.LevelError, "Agent state: expired; no valid SVID is left to serve and a plugin fails on this host (not the server)")
		return len(r) == 1 && attr(r[0], "failed_plugin").String() == `NodeAttestor "x509pop"`
	})
	if b := serverBlamed(rec); len(b) > 0 {
		t.Fatalf("lines blaming the server for a local failure: %q", b)
	}

	// The file is back: the agent attests and serves again.
	if err := os.Rename(d.certPath+".away", d.certPath); err != nil {
		t.Fatal(err)
	}
	advanceUntil(t, clk, "connected again", func() bool { return a.m.Status().State == manager.StateConnected })
	if st := a.m.Status(); st.FailedPlugin != "" || st.LastError != "" {
		t.Fatalf("connected status keeps the failure: %+v", st)
	}
}
