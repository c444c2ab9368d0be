package interop

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// TestSigilAgentX509PoP: a sigil-agent attests with NodeAttestor "x509pop"
// (an RSA device certificate from an intermediate it sends along) to each
// server, so to spire-server too: both record the same agent ID, type,
// re-attestability and node selectors, and a node alias on
// x509pop:subject:cn reaches its workload. With one-minute agent SVIDs
// the agent renews by attesting again (the server lists a new serial for
// the same agent, and the agent keeps serving); evicted, it attests again
// by itself.
func TestSigilAgentX509PoP(t *testing.T) {
	testutil.SPIREBinaries(t)
	devices := testutil.NewDeviceCA(t, testutil.ShortTempDir(t))
	// One device, so that both servers see the same certificate.
	na, cert := devices.Device(t, testutil.ShortTempDir(t), "sigil-device", testca.KeyOf(testca.RSA2048))
	outcomes := map[string]string{}
	for _, k := range serverKinds {
		t.Run(k.name, func(t *testing.T) {
			srv := k.start(t, testutil.ServerConfig{AgentTTL: time.Minute, Plugins: []testutil.Plugin{devices.ServerPlugin()}})
			adm := srv.Admin(t)
			agentID := testutil.X509PoPAgentID(srv.TrustDomain(), cert)
			groupID := srv.ID("/devices/rsa")
			adm.CreateEntry(t, groupID, srv.ID("/spire/server"), "x509pop:subject:cn:sigil-device")
			web := srv.ID("/web")
			adm.CreateEntry(t, web, groupID, uidSelector)

			a := testutil.StartAgent(t, testutil.AgentWith(t, srv, "", na))
			checkWorkload(t, srv, a, web)
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

			// Renewal by re-attestation: a new serial for the same agent.
			newSerial := func(old string) {
				t.Helper()
				err := testutil.Poll(2*time.Minute, 200*time.Millisecond, func() (bool, error) {
					r := findAgent(t, adm, agentID)
					return r != nil && r.GetX509SvidSerialNumber() != old, nil
				})
				if err != nil {
					t.Fatalf("the x509pop sigil-agent did not attest again to %s: %v", srv.Name(), err)
				}
			}
			serial := rec.GetX509SvidSerialNumber()
			newSerial(serial)
			if !strings.Contains(a.Proc.Logs(), "reattestable=true") {
				t.Error("the agent did not log that the server called it reattestable")
			}
			testutil.RequireSVID(t, a.SocketAddr(), web, deadline)

			// Evicted, it attests again with its certificate.
			serial = findAgent(t, adm, agentID).GetX509SvidSerialNumber()
			serverCLI(t, srv, "agent", "evict", "-spiffeID", agentID.String())
			newSerial(serial)
			if a.Proc.Exited() {
				t.Fatal("the evicted x509pop sigil-agent exited")
			}
			testutil.RequireSVID(t, a.SocketAddr(), web, deadline)
		})
	}
	if a, b := outcomes["sigil-server"], outcomes["spire-server"]; a != b {
		t.Errorf("x509pop agent record\nsigil-server: %s\nspire-server: %s", a, b)
	}
}

// TestSPIREAgentX509PoPRenewal: a spire-agent attested with x509pop renews
// its one-minute agent SVID by attesting again (SPIRE's agent re-attests
// when the server said the node can), against both servers: the server
// lists a new serial for the same agent, which keeps serving its workload.
func TestSPIREAgentX509PoPRenewal(t *testing.T) {
	testutil.SPIREBinaries(t)
	devices := testutil.NewDeviceCA(t, testutil.ShortTempDir(t))
	na, cert := devices.Device(t, testutil.ShortTempDir(t), "spire-device", testca.KeyOf(testca.ECDSAP384))
	for _, k := range serverKinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel() // mostly waiting for the SVID to age
			srv := k.start(t, testutil.ServerConfig{AgentTTL: time.Minute, Plugins: []testutil.Plugin{devices.ServerPlugin()}})
			adm := srv.Admin(t)
			agentID := testutil.X509PoPAgentID(srv.TrustDomain(), cert)
			web := srv.ID("/web")
			adm.CreateEntry(t, web, agentID, uidSelector)
			a := testutil.StartSPIREAgent(t, testutil.AgentWith(t, srv, "", na))
			testutil.RequireSVID(t, a.SocketAddr(), web, deadline)
			rec := findAgent(t, adm, agentID)
			if rec == nil {
				t.Fatalf("%s does not list %s", srv.Name(), agentID)
			}
			serial := rec.GetX509SvidSerialNumber()
			err := testutil.Poll(2*time.Minute, 200*time.Millisecond, func() (bool, error) {
				r := findAgent(t, adm, agentID)
				return r != nil && r.GetX509SvidSerialNumber() != serial, nil
			})
			if err != nil {
				t.Fatalf("the x509pop spire-agent did not renew against %s: %v", srv.Name(), err)
			}
			// By attesting again, not with RenewAgent.
			if srv.Name() == "sigil-server" && !strings.Contains(srv.Proc.Logs(), "Agent re-attested") {
				t.Error("sigil-server did not log a re-attestation of the spire-agent")
			}
			if a.Proc.Exited() {
				t.Fatal("the spire-agent exited")
			}
			testutil.RequireSVID(t, a.SocketAddr(), web, deadline)
		})
	}
}
