package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/bench/internal/stack"
	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/attest/node/tpm"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil/swtpm"
)

// tpmServer starts a server with NodeAttestor "tpm" (beside join_token)
// trusting the manufacturer CA of the shared swtpm devices, with more
// plugin_data (pcr_selection).
func tpmServer(b *testing.B, im *swtpm.Image, data map[string]any) *stack.Server {
	b.Helper()
	d := map[string]any{"ek_ca_path": im.EKCADir(b)}
	for k, v := range data {
		d[k] = v
	}
	return stack.StartServer(b, config.NewPlugin("NodeAttestor", tpm.Type, d))
}

// BenchmarkTPMAttestation measures tpm node attestations per second against
// one in-process server over agent/v1 AttestAgent, as BenchmarkAttestation:
// 8 concurrent agents, each on its own software TPM (swtpm, 8 distinct
// devices: EKs issued by one manufacturer CA, trusted through ek_ca_path).
// Each op is a whole attestation: the agent reads its EK and creates an AK
// in its TPM, the server checks the EK certificate and makes the
// credential, the TPM activates it (and quotes 3 PCRs with quote=3pcr).
// Eight devices make b.N attestations, so all but the first of each are
// re-attestations of a known node (what a tpm agent's SVID renewal is).
// The swtpm processes run on the same 2 cores as the server and the
// agents.
func BenchmarkTPMAttestation(b *testing.B) {
	for _, c := range []struct {
		name string
		data map[string]any
	}{{"quote=none", nil}, {"quote=3pcr", map[string]any{"pcr_selection": []int{0, 7, 16}}}} {
		b.Run(c.name, func(b *testing.B) {
			ims := swtpm.SharedDevices(b, 8)
			srv := tpmServer(b, ims[0], c.data)
			cl := bootstrapClient(b, srv)
			sessions := make([]func() (node.Session, error), len(ims))
			for i, im := range ims {
				a := tpm.NewAgent(tpm.AgentConfig{TPMPath: im.Start(b).Socket})
				sessions[i] = func() (node.Session, error) { return a.Begin(context.Background()) }
			}
			runAttestations(b, cl, tpm.Type, sessions)
		})
	}
}

// tpmAgentConfig is an agent on tp: NodeAttestor "tpm" and KeyManager
// "tpm" (or disk when keyManager is "disk") in a fresh data dir.
func tpmAgentConfig(b *testing.B, srv *stack.Server, tp *swtpm.TPM, dir, keyManager string) *config.Agent {
	b.Helper()
	cfg := srv.AgentConfig(b, dir, "")
	var ps []config.Plugin
	for _, p := range cfg.Plugins {
		if p.Type != "NodeAttestor" && p.Type != "KeyManager" {
			ps = append(ps, p)
		}
	}
	keys := filepath.Join(dir, "keys")
	ps = append(ps, config.NewPlugin("NodeAttestor", tpm.Type, map[string]any{"tpm_path": tp.Socket}))
	if keyManager == "tpm" {
		ps = append(ps, config.NewPlugin("KeyManager", "tpm", map[string]any{"tpm_path": tp.Socket, "directory": keys}))
	} else {
		ps = append(ps, config.NewPlugin("KeyManager", "disk", map[string]any{"directory": keys}))
	}
	cfg.Plugins = ps
	return cfg
}

// BenchmarkTPMAgentStart measures agent start → first workload X509-SVID
// for a device with no state yet (a fresh data_dir: node attestation, the
// agent key created, sync, the workload SVID signed), in-process against
// an in-process server, as BenchmarkAgentStart:
//
//   - join_token: the baseline, a new token each time (created, with the
//     workload's entry, before the timer);
//   - tpm/key=disk: NodeAttestor "tpm" (the same swtpm each time: a known
//     node attesting again), agent key on disk;
//   - tpm/key=tpm: NodeAttestor "tpm" and KeyManager "tpm";
//   - tpm-restart/key=tpm: a restart with the persisted SVID and its
//     TPM-held key (no attestation; the key is loaded through the TPM).
//
// Reports p50-ms/p99-ms.
func BenchmarkTPMAgentStart(b *testing.B) {
	measure := func(b *testing.B, id spiffeid.ID, setup func(i int) *config.Agent) {
		var lat stack.Latencies
		i := 0
		for b.Loop() {
			b.StopTimer()
			cfg := setup(i)
			i++
			b.StartTimer()
			t0 := time.Now()
			a, err := stack.RunAgent(cfg)
			if err != nil {
				b.Fatal(err)
			}
			_, err = fetchUntil(a.Socket, id, 30*time.Second)
			lat.Add(time.Since(t0))
			b.StopTimer()
			a.Stop()
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		lat.Report(b)
	}
	wl := spiffeid.RequireFromSegments(stack.TrustDomain, "workload", "bench")
	uidSel := fmt.Sprintf("uid:%d", os.Getuid())

	b.Run("join_token", func(b *testing.B) {
		srv := stack.StartServer(b)
		measure(b, wl, func(i int) *config.Agent {
			token, agentID := srv.JoinToken(b)
			srv.CreateEntries(b, stack.Entry(agentID, wl, uidSel))
			return srv.AgentConfig(b, filepath.Join(srv.Dir, fmt.Sprintf("agent-%d", i)), token)
		})
	})
	im := swtpm.Shared(b)
	for _, km := range []string{"disk", "tpm"} {
		b.Run("tpm/key="+km, func(b *testing.B) {
			srv := tpmServer(b, im, nil)
			tp := im.Start(b)
			srv.CreateEntries(b, stack.Entry(spiffeid.RequireFromSegments(stack.TrustDomain, "spire", "agent", "tpm", tp.EKPubHash(b)), wl, uidSel))
			measure(b, wl, func(i int) *config.Agent {
				return tpmAgentConfig(b, srv, tp, filepath.Join(srv.Dir, fmt.Sprintf("agent-%d", i)), km)
			})
		})
	}
	b.Run("tpm-restart/key=tpm", func(b *testing.B) {
		srv := tpmServer(b, im, nil)
		tp := im.Start(b)
		srv.CreateEntries(b, stack.Entry(spiffeid.RequireFromSegments(stack.TrustDomain, "spire", "agent", "tpm", tp.EKPubHash(b)), wl, uidSel))
		cfg := tpmAgentConfig(b, srv, tp, filepath.Join(srv.Dir, "agent"), "tpm")
		a, err := stack.RunAgent(cfg)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := fetchUntil(a.Socket, wl, 30*time.Second); err != nil {
			b.Fatal(err)
		}
		a.Stop()
		measure(b, wl, func(int) *config.Agent { return cfg })
	})
}
