package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/bench/internal/stack"
	"github.com/sigil-spiffe/sigil/internal/adminclient"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/fakedocker"
	"github.com/sigil-spiffe/sigil/internal/testutil/fakesystemd"
)

// BenchmarkWorkloadAttestors measures warm FetchX509SVID calls, as
// BenchmarkWorkloadAPI's -proc variant (release-built sigil-agent and
// sigil-server processes, the go-spiffe client created once, the caller
// attested on every call), on three agents of one server, one after the
// other in the same run:
//
//   - unix: WorkloadAttestor "unix" alone (entry: unix:uid);
//   - docker: "unix" and "docker" (entry: docker:label:app:bench only, so
//     every answer needed the docker attestor). The benchmark process
//     stands for a process in a container: the agent's proc_dir is a copy
//     of /proc's cgroup files where this process and the container's init
//     (another PID) are in docker-<id>.scope, systemd driver on cgroup v2,
//     and the engine is internal/testutil/fakedocker on a unix socket (in
//     this process), so each call reads two cgroup files and makes one
//     GET /containers/{id}/json;
//   - systemd: "unix" and "systemd" (entry: systemd:id:bench.service only)
//     on a private dbus-daemon (its own process) with the fake
//     org.freedesktop.systemd1 of internal/testutil/fakesystemd (in this
//     process): each call is GetUnitByPID and two Properties.Get through
//     the bus.
//
// The attestors of a call run at once, so each variant's latency over
// unix's is what its attestor adds. Reports p50-ms, p99-ms, cpu-us/op
// (this process: client and the fake engine or systemd) and
// agent-cpu-us/op.
func BenchmarkWorkloadAttestors(b *testing.B) {
	ctx := context.Background()
	srv := stack.StartServerProcess(b)
	self := os.Getpid()

	// docker: the fake engine and the proc_dir fixture.
	const ctrID = "7970af05857ce6a04845fe9b9075e704122318bd3245b5bc1a00301160aea400"
	const initPid = 4100
	eng := fakedocker.Start(b)
	eng.Add(fakedocker.Container{
		ID: ctrID, Name: "bench", Pid: initPid, Image: "registry.example.org/bench:1.0",
		ImageID: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		Labels:  map[string]string{"app": "bench", "tier": "front"},
		Env:     []string{"PATH=/usr/local/bin:/usr/bin", "MODE=bench"},
	})
	procDir := testutil.ShortTempDir(b)
	for pid, cg := range map[int]string{
		self:    "0::/system.slice/docker-" + ctrID + ".scope/app\n",
		initPid: "0::/system.slice/docker-" + ctrID + ".scope\n",
	} {
		d := filepath.Join(procDir, strconv.Itoa(pid))
		if err := os.MkdirAll(d, 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "cgroup"), []byte(cg), 0o644); err != nil {
			b.Fatal(err)
		}
	}

	// systemd: a bus and the fake systemd placing this process in a unit.
	bus := fakesystemd.Start(b)
	sd := bus.Serve(b)
	sd.Set(self, fakesystemd.Unit{ID: "bench.service", FragmentPath: "/etc/systemd/system/bench.service"})

	variants := []struct {
		name     string
		selector *types.Selector
		opts     stack.AgentOptions
	}{
		{"unix", &types.Selector{Type: "unix", Value: fmt.Sprintf("uid:%d", os.Getuid())}, stack.AgentOptions{}},
		{"docker", &types.Selector{Type: "docker", Value: "label:app:bench"}, stack.AgentOptions{
			WorkloadAttestors: []testutil.Plugin{{Type: "WorkloadAttestor", Name: "docker", Data: map[string]any{
				"docker_socket_path": eng.URL(), "proc_dir": procDir,
			}}},
		}},
		{"systemd", &types.Selector{Type: "systemd", Value: "id:bench.service"}, stack.AgentOptions{
			WorkloadAttestors: []testutil.Plugin{{Type: "WorkloadAttestor", Name: "systemd"}},
			Env:               []string{"DBUS_SYSTEM_BUS_ADDRESS=" + bus.Address},
		}},
	}
	type agent struct {
		name   string
		id     spiffeid.ID
		pid    int
		client *workloadapi.Client
	}
	var agents []agent
	for _, v := range variants {
		token, agentID := srv.JoinToken(b)
		id := spiffeid.RequireFromSegments(stack.TrustDomain, "workload", v.name)
		srv.CreateEntries(b, &types.Entry{
			SpiffeId: adminclient.ProtoID(id), ParentId: adminclient.ProtoID(agentID),
			Selectors: []*types.Selector{v.selector},
		})
		p := srv.StartAgentProcessWith(b, token, v.opts)
		if _, err := fetchUntil(p.Socket, id, 30*time.Second); err != nil {
			b.Fatalf("%s: %v", v.name, err)
		}
		c, err := workloadapi.New(ctx, workloadapi.WithAddr(p.Socket))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		agents = append(agents, agent{v.name, id, p.Pid, c})
	}
	for _, a := range agents {
		b.Run(a.name, func(b *testing.B) { benchFetchX509SVID(b, a.client, a.id, a.pid) })
	}
}
