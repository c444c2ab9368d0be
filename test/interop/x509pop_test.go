package interop

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// TestX509PoP: a real spire-agent attests with NodeAttestor "x509pop" (a
// device certificate from an intermediate it sends along, under a root the
// server trusts) to each server: the agent ID, attestation type,
// re-attestability and node selectors are the same on both, a node alias
// on an x509pop selector and an entry under the agent ID reach its
// workload; evicted, it re-attests by itself (x509pop can) and serves
// again; banned, it exits.
func TestX509PoP(t *testing.T) {
	testutil.SPIREBinaries(t)
	devices := testutil.NewDeviceCA(t, testutil.ShortTempDir(t))
	// One device, so that both servers see the same certificate.
	deviceDir := testutil.ShortTempDir(t)
	na, cert := devices.Device(t, deviceDir, "device-1")
	outcomes := map[string]string{}
	for _, k := range serverKinds {
		t.Run(k.name, func(t *testing.T) {
			srv := k.start(t, testutil.ServerConfig{Plugins: []testutil.Plugin{devices.ServerPlugin()}})
			adm := srv.Admin(t)
			agentID := testutil.X509PoPAgentID(srv.TrustDomain(), cert)
			groupID := srv.ID("/devices/1")
			adm.CreateEntry(t, groupID, srv.ID("/spire/server"), "x509pop:subject:cn:device-1")
			viaAlias, direct := srv.ID("/via-alias"), srv.ID("/direct")
			adm.CreateEntry(t, viaAlias, groupID, uidSelector)
			adm.CreateEntry(t, direct, agentID, uidSelector)

			cfg := testutil.AgentFor(t, srv, "/unused", "")
			cfg.JoinToken, cfg.NodeAttestor = "", na
			a := testutil.StartSPIREAgent(t, cfg)
			testutil.RequireSVID(t, a.SocketAddr(), viaAlias, deadline)
			testutil.RequireSVID(t, a.SocketAddr(), direct, deadline)
			rec := findAgent(t, adm, agentID)
			if rec == nil {
				t.Fatalf("%s does not list %s", srv.Name(), agentID)
			}
			var sels []string
			for _, s := range rec.GetSelectors() {
				sels = append(sels, s.GetType()+":"+s.GetValue())
			}
			sort.Strings(sels)
			outcomes[srv.Name()] = fmt.Sprintf("type=%s reattest=%t selectors=%s", rec.GetAttestationType(), rec.GetCanReattest(),
				strings.Join(sels, " "))

			// Evicted, it attests again with its certificate.
			serial := rec.GetX509SvidSerialNumber()
			serverCLI(t, srv, "agent", "evict", "-spiffeID", agentID.String())
			err := testutil.Poll(deadline, 200*time.Millisecond, func() (bool, error) {
				r := findAgent(t, adm, agentID)
				return r != nil && r.GetX509SvidSerialNumber() != serial, nil
			})
			if err != nil {
				t.Fatalf("the evicted x509pop spire-agent did not attest again to %s: %v", srv.Name(), err)
			}
			if a.Proc.Exited() {
				t.Fatal("the evicted x509pop spire-agent exited")
			}
			testutil.RequireSVID(t, a.SocketAddr(), direct, deadline)

			serverCLI(t, srv, "agent", "ban", "-spiffeID", agentID.String())
			logs := a.Proc.WaitExit(t, deadline)
			if !strings.Contains(logs, "Agent is banned") {
				t.Error("the banned x509pop spire-agent did not log that it is banned")
			}
		})
	}
	if a, b := outcomes["sigil-server"], outcomes["spire-server"]; a != b {
		t.Errorf("x509pop agent record\nsigil-server: %s\nspire-server: %s", a, b)
	}
}
