//go:build !sigil_omit_systemd

package agent_test

import (
	"context"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	agentcatalog "github.com/sigil-spiffe/sigil/internal/catalog/agent"
	"github.com/sigil-spiffe/sigil/internal/testutil/fakesystemd"
)

// TestSystemdExampleConf: the commented WorkloadAttestor "systemd" of
// conf/agent/agent.conf parses when uncommented beside unix, builds, and
// attests a process of a unit through the system bus
// (DBUS_SYSTEM_BUS_ADDRESS); a plugin_data key is refused.
func TestSystemdExampleConf(t *testing.T) {
	src, err := os.ReadFile("../../../conf/agent/agent.conf")
	if err != nil {
		t.Fatal(err)
	}
	s := uncomment(t, string(src), `WorkloadAttestor "systemd" {`, "")
	p, err := parse(t, s)
	if err != nil {
		t.Fatalf("%v\n%s", err, s)
	}
	if got := strings.Join(p.Names(), ", "); !strings.Contains(got, `WorkloadAttestor "unix", WorkloadAttestor "systemd"`) {
		t.Fatalf("plugins %s", got)
	}

	bus := fakesystemd.Start(t)
	sd := bus.Serve(t)
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	sd.Set(cmd.Process.Pid, fakesystemd.Unit{ID: "web.service", FragmentPath: "/etc/systemd/system/web.service"})
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.Address)
	ws := p.WorkloadAttestors()
	w, err := ws[len(ws)-1].Build(context.Background(), agentcatalog.WorkloadAttestorDeps{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.(io.Closer).Close() }()
	sels, err := w.Attest(context.Background(), int32(cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range sels {
		got = append(got, s.Type+":"+s.Value)
	}
	if want := []string{"systemd:id:web.service", "systemd:fragment_path:/etc/systemd/system/web.service"}; !slices.Equal(got, want) {
		t.Fatalf("selectors %q", got)
	}

	s = strings.Replace(s, `    WorkloadAttestor "systemd" {`, `    WorkloadAttestor "systemd" {
        plugin_data {
            bus_address = "unix:path=/run/dbus/system_bus_socket"
        }`, 1)
	if _, err := parse(t, s); err == nil || !strings.Contains(err.Error(), `WorkloadAttestor "systemd"`) || !strings.Contains(err.Error(), "bus_address") {
		t.Fatalf("err %v", err)
	}
}
