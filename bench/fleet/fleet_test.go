package fleet

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/sigil-spiffe/sigil/bench/internal/stack"
	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// TestMain removes the server binary testutil builds.
func TestMain(m *testing.M) { os.Exit(testutil.Main(m)) }

var (
	flagAgents      = flag.Int("fleet.agents", 0, "TestFleet: simulated agents (0 skips TestFleet)")
	flagEntries     = flag.Int("fleet.entries", 10, "TestFleet: entries per agent")
	flagShared      = flag.Int("fleet.shared", 0, "TestFleet: entries shared by every agent (one node alias per agent)")
	flagConcurrency = flag.Int("fleet.concurrency", 256, "TestFleet: agents attesting, syncing or renewing at once")
	flagChurn       = flag.Float64("fleet.churn", 20, "TestFleet: entry operations per second once synced (create, update, delete in turn)")
	flagChurnFor    = flag.Duration("fleet.churnfor", 10*time.Second, "TestFleet: how long the churn runs")
	flagRenew       = flag.Bool("fleet.renew", true, "TestFleet: renew every agent SVID and entry SVID once")
	flagKeepLog     = flag.String("fleet.keeplog", "", "TestFleet: copy the server's log here at the end")
	flagStorm       = flag.Bool("fleet.storm", false, "TestFleet: at the end, restart the server with every agent connected and time their return")
	flagKeyPerAgent = flag.Bool("fleet.keyperagent", false, "TestFleet: one key for all of an agent's CSRs (less simulator CPU; the same server work)")
	flagHeap        = flag.String("fleet.heapprofile", "", "TestFleet: write a heap profile here once every agent synced (with -fleet.server inproc: the server's and the simulator's heap)")
	flagStormCPU    = flag.Float64("fleet.stormcpu", 0, "TestFleet with -fleet.storm: confine the restarted server to this many CPUs (a cgroup; root), as on a machine busy with other work")
	flagServer      = flag.String("fleet.server", "sigil", "TestFleet: sigil (a sigil-server process), inproc (in this process, for -cpuprofile) or spire (spire-server of "+testutil.SPIREBinEnv+")")
)

// TestFleet runs the simulator at the scale its flags give, e.g.
//
//	go test ./bench/fleet -run TestFleet -timeout 60m -v -args -fleet.agents 10000
//
// and logs the report.
func TestFleet(t *testing.T) {
	if *flagAgents <= 0 {
		t.Skip("-fleet.agents not set")
	}
	cfg := Config{
		Agents: *flagAgents, EntriesPerAgent: *flagEntries, SharedEntries: *flagShared,
		Concurrency: *flagConcurrency, Churn: *flagChurn, ChurnFor: *flagChurnFor, Renew: *flagRenew,
		KeyPerAgent: *flagKeyPerAgent, storm: *flagStorm,
	}
	if *flagHeap != "" {
		cfg.AfterSync = func() {
			runtime.GC()
			f, err := os.Create(*flagHeap)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if g, err := os.Create(*flagHeap + ".goroutines"); err == nil {
				_ = pprof.Lookup("goroutine").WriteTo(g, 1)
				g.Close()
			}
			if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	rep := run(t, *flagServer, cfg)
	t.Logf("fleet report (%s server):\n%s", *flagServer, rep.Markdown())
}

// TestFleetSmoke is the simulator's short run in CI, so it cannot rot: 200
// agents with 3 entries each and 2 shared, a little churn, one renewal and
// a restart of the server, against a sigil-server process. Every agent must
// attest and sync, every change must reach its agent, every agent must be
// back on a watch stream after the restart, and nothing may fail.
func TestFleetSmoke(t *testing.T) {
	cfg := Config{
		Agents: 200, EntriesPerAgent: 3, SharedEntries: 2, Concurrency: 32,
		Churn: 30, ChurnFor: 500 * time.Millisecond, Renew: true, storm: true,
	}
	rep := run(t, "sigil", cfg)
	t.Logf("fleet report:\n%s", rep.Markdown())
	if n := rep.ErrorCount(); n > 0 {
		t.Errorf("%d errors: %v", n, rep.Errors)
	}
	if !rep.Watch {
		t.Error("the server never confirmed watch mode")
	}
	if rep.SyncLat.Len() != cfg.Agents {
		t.Errorf("%d agents synced, want %d", rep.SyncLat.Len(), cfg.Agents)
	}
	if rep.ChurnOps == 0 || rep.ChurnLost > 0 {
		t.Errorf("churn: %d operations, %d never seen by their agent", rep.ChurnOps, rep.ChurnLost)
	}
	if rep.StormNotBack > 0 || rep.StormLat.Len() != cfg.Agents {
		t.Errorf("after the server's restart %d agents were not back on a watch stream", cfg.Agents-rep.StormLat.Len())
	}
	if rep.PeakRSS == 0 || rep.SyncCPU == 0 {
		t.Errorf("server not measured: peak RSS %d, sync CPU %v", rep.PeakRSS, rep.SyncCPU)
	}
}

// run starts the server kind ("sigil", "inproc" or "spire") and runs cfg
// against it. With cfg.storm, Restart stops and starts the server process.
func run(t *testing.T, kind string, cfg Config) *Report {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	switch kind {
	case "sigil", "spire":
		scfg := testutil.ServerConfig{TrustDomain: stack.TrustDomain.Name(), LogLevel: "INFO"}
		if kind == "sigil" {
			port, err := testutil.FreePort()
			if err != nil {
				t.Fatal(err)
			}
			scfg.MetricsPort = port
		}
		var srv *testutil.Server
		if kind == "spire" {
			// As Sigil's limit, which never refuses a valid token.
			scfg.NoAttestationRateLimit = true
			srv = testutil.StartSPIREServer(t, scfg)
		} else {
			srv = testutil.StartServer(t, scfg)
		}
		t.Cleanup(func() { _ = srv.Proc.Stop() })
		if *flagKeepLog != "" {
			t.Cleanup(func() { // before the data dir is removed
				if b, err := os.ReadFile(srv.Proc.LogPath); err == nil {
					_ = os.WriteFile(*flagKeepLog, b, 0o600)
				}
			})
		}
		admin := srv.Admin(t)
		cfg.Addr, cfg.Admin, cfg.ServerPid = srv.Addr(), admin.Client, srv.Proc.Pid()
		if scfg.MetricsPort != 0 {
			cfg.MetricsURL = srv.MetricsURL()
		}
		cfg.Bundle = admin.BundleCerts(t)
		if cfg.storm {
			cfg.Restart = func() (int, error) {
				if err := srv.Proc.Stop(); err != nil {
					// Too slow a stop is a finding, not the end of the
					// run: keep the log (with its goroutine dump).
					kept := filepath.Join(os.TempDir(), fmt.Sprintf("fleet-stop-%d.log", time.Now().UnixNano()))
					if b, rerr := os.ReadFile(srv.Proc.LogPath); rerr == nil {
						_ = os.WriteFile(kept, b, 0o600)
					}
					t.Logf("restart: %v (log kept in %s)", err, kept)
				}
				// Ready (the admin socket's health check SERVING) may take
				// longer than testutil's 30 s while every agent reconnects:
				// wait up to 10 minutes, and say how long it took.
				t0 := time.Now()
				srv.StartProcess(t)
				if *flagStormCPU > 0 {
					release, err := confineCPU(srv.Proc.Pid(), *flagStormCPU, fmt.Sprintf("sigil-fleet-%d", os.Getpid()))
					if err != nil {
						return 0, err
					}
					t.Cleanup(func() { _ = srv.Proc.Stop(); release() })
					t.Logf("restart: the server is confined to %v CPUs", *flagStormCPU)
				}
				if err := stack.WaitServing(srv, 10*time.Minute, 20*time.Millisecond); err != nil {
					return 0, err
				}
				t.Logf("restart: ready %v after the start", time.Since(t0).Round(time.Millisecond))
				return srv.Proc.Pid(), nil
			}
		}
	case "inproc":
		srv := stack.StartServer(t)
		cfg.Addr, cfg.Admin = srv.Addr, srv.Client
		cfg.Bundle = srv.BundleCerts(t)
	default:
		t.Fatalf("-fleet.server %q: want sigil, inproc or spire", kind)
	}
	cfg.TrustDomain = stack.TrustDomain
	cfg.Progress = t.Logf
	// The agents' keepalive pings (every 15 s, as sigil-agent's), but 60 s
	// for the answer instead of 10 s: thousands of simulated agents share
	// one process on a loaded machine, and at 10,000 the simulator itself
	// was starved long enough to miss answers the server had sent, which
	// a real agent on its own device does not.
	cfg.DialOptions = append(cfg.DialOptions, grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 15 * time.Second, Timeout: time.Minute, PermitWithoutStream: true}))
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("%v\n%s", err, rep.Markdown())
	}
	return rep
}
