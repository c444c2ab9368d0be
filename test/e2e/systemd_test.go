//go:build !sigil_omit_systemd

package e2e

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/fakesystemd"
)

// TestSystemdWorkloadAttestor: a sigil-agent process with WorkloadAttestor
// "systemd" beside "unix" (the system bus named by DBUS_SYSTEM_BUS_ADDRESS,
// a private dbus-daemon with a fake systemd) serves this process the
// entries of the unit systemd places it in, and no other unit's: moved to
// another unit, it gets that unit's at its next call (nothing cached).
// With the bus gone the systemd attestor fails (logged, naming the bus)
// and only the unix entry is served.
func TestSystemdWorkloadAttestor(t *testing.T) {
	bus := fakesystemd.Start(t)
	sd := bus.Serve(t)
	self := os.Getpid()
	sd.Set(self, fakesystemd.Unit{ID: "web.service", FragmentPath: "/etc/systemd/system/web.service"})

	srv := testutil.StartServer(t, testutil.ServerConfig{})
	cfg := testutil.AgentFor(t, srv, "/agent/host-1", "")
	cfg.WorkloadAttestors = []testutil.Plugin{{Type: "WorkloadAttestor", Name: "systemd"}}
	agent := testutil.NewAgent(t, cfg)
	agent.Env = []string{"DBUS_SYSTEM_BUS_ADDRESS=" + bus.Address}
	agentID := srv.ID("/agent/host-1")
	admin := srv.Admin(t)
	webID, dbID, uidID := srv.ID("/web"), srv.ID("/db"), srv.ID("/uid")
	admin.CreateEntry(t, webID, agentID, "systemd:id:web.service", "systemd:fragment_path:/etc/systemd/system/web.service")
	admin.CreateEntry(t, dbID, agentID, "systemd:id:db.service")
	admin.CreateEntry(t, uidID, agentID, uidSelector)
	agent.Start(t)

	// served polls one-shot fetches until this process is served exactly
	// want.
	served := func(want ...spiffeid.ID) {
		t.Helper()
		var got []string
		err := testutil.Poll(deadline, 20*time.Millisecond, func() (bool, error) {
			svids, err := testutil.FetchX509SVIDs(context.Background(), agent.SocketAddr())
			if err != nil {
				return false, nil
			}
			got = got[:0]
			for _, s := range svids {
				got = append(got, s.ID.String())
			}
			slices.Sort(got)
			var w []string
			for _, id := range want {
				w = append(w, id.String())
			}
			slices.Sort(w)
			return slices.Equal(got, w), nil
		})
		if err != nil {
			t.Fatalf("served %q, want %v: %v\n%s", got, want, err, agent.Proc.Logs())
		}
	}
	served(webID, uidID)

	sd.Set(self, fakesystemd.Unit{ID: "db.service", FragmentPath: "/etc/systemd/system/db.service"})
	served(dbID, uidID)

	bus.Stop()
	served(uidID)
	log := agent.Proc.WaitForLog(t, "dial unix "+bus.Socket, deadline)
	line := log[strings.LastIndex(log[:strings.Index(log, "dial unix "+bus.Socket)], "\n")+1:]
	line, _, _ = strings.Cut(line, "\n")
	if !strings.Contains(line, "Workload attestor failed") || !strings.Contains(line, "attestor=systemd") || !strings.Contains(line, "connect to the system bus") {
		t.Fatalf("log line %q", line)
	}
}
