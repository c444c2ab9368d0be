package e2e

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/bench/internal/stack"
	"github.com/sigil-spiffe/sigil/internal/adminclient"
	"github.com/sigil-spiffe/sigil/internal/agent/client"
	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/attest/node/x509pop"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// x509popServer starts a server with NodeAttestor "x509pop" (beside
// join_token) trusting a device CA, and returns it with the CA.
func x509popServer(b *testing.B) (*stack.Server, *testutil.DeviceCA) {
	b.Helper()
	ca := testutil.NewDeviceCA(b, testutil.ShortTempDir(b))
	srv := stack.StartServer(b, config.NewPlugin("NodeAttestor", x509pop.Type, map[string]any{"ca_bundle_path": ca.BundlePath}))
	return srv, ca
}

// bootstrapClient is an agent client without an SVID (node attestation).
func bootstrapClient(b *testing.B, srv *stack.Server) *client.Client {
	b.Helper()
	bundle := srv.BundleCerts(b)
	c, err := client.Dial(client.Config{Addr: srv.Addr, TrustDomain: stack.TrustDomain, Bundle: func() []*x509.Certificate { return bundle }})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// tokenSession is a join-token attestation's data: the token, no challenge.
type tokenSession string

func (t tokenSession) Payload() []byte { return []byte(t) }
func (tokenSession) Respond(context.Context, []byte) ([]byte, error) {
	return nil, fmt.Errorf("no challenge")
}

// BenchmarkAttestation measures node attestations per second against one
// in-process server over agent/v1 AttestAgent (TLS, no client
// certificate), 8 concurrent agents on the 2-core machine sharing it with
// the server: each op is one whole attestation, data + CSR in, agent SVID
// out (the node record written, synchronous=FULL).
//
//   - join_token: a new token per attestation (created before the timer);
//   - x509pop-p256 / x509pop-rsa2048: a new device per attestation
//     (certificate issued before the timer by an intermediate it sends),
//     the agent side signing the server's challenge with its key;
//   - x509pop-reattest: one device attesting again and again (the
//     renewal of an x509pop agent).
//
// Reports attestations/s and cpu-us/op, the CPU time of the whole process
// (server, agents, device signatures) per attestation; compare within one
// run.
func BenchmarkAttestation(b *testing.B) {
	b.Run("join_token", func(b *testing.B) {
		srv := stack.StartServer(b)
		c := bootstrapClient(b, srv)
		sessions := make([]func() (node.Session, error), b.N)
		for i := range sessions {
			token, _ := srv.JoinToken(b)
			sessions[i] = func() (node.Session, error) { return nopClose{tokenSession(token)}, nil }
		}
		runAttestations(b, c, "join_token", sessions)
	})
	for _, kt := range []struct {
		name string
		kt   testca.KeyType
	}{{"x509pop-p256", testca.ECDSAP256}, {"x509pop-rsa2048", testca.RSA2048}} {
		b.Run(kt.name, func(b *testing.B) {
			srv, ca := x509popServer(b)
			c := bootstrapClient(b, srv)
			sessions := make([]func() (node.Session, error), b.N)
			for i := range sessions {
				sessions[i] = deviceSession(b, ca, fmt.Sprintf("device-%d", i), testca.KeyOf(kt.kt))
			}
			runAttestations(b, c, x509pop.Type, sessions)
		})
	}
	b.Run("x509pop-reattest", func(b *testing.B) {
		srv, ca := x509popServer(b)
		c := bootstrapClient(b, srv)
		runAttestations(b, c, x509pop.Type, []func() (node.Session, error){deviceSession(b, ca, "device")})
	})
}

// runAttestations runs b.N attestations over c, 8 at a time, the i-th
// with sessions[i % len(sessions)], and reports attestations/s and
// cpu-us/op (the whole process's CPU time per attestation).
func runAttestations(b *testing.B, c *client.Client, typ string, sessions []func() (node.Session, error)) {
	csr := benchCSR(b)
	b.Helper()
	var next atomic.Int64
	b.SetParallelism(4) // 8 goroutines on 2 CPUs
	b.ResetTimer()
	t0, cpu0 := time.Now(), stack.CPUTime()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := next.Add(1) - 1
			s, err := sessions[i%int64(len(sessions))]()
			if err != nil {
				b.Error(err)
				return
			}
			_, err = c.AttestAgent(context.Background(), typ, s, csr)
			_ = s.Close()
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(t0).Seconds(), "attestations/s")
	b.ReportMetric(float64((stack.CPUTime()-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
}

// deviceSession writes a device's files and returns how to begin one of
// its attestations (reading the files, as the agent does).
func deviceSession(b *testing.B, ca *testutil.DeviceCA, cn string, opts ...testca.Option) func() (node.Session, error) {
	b.Helper()
	dir := b.TempDir()
	na, _ := ca.Device(b, dir, cn, opts...)
	a, err := x509pop.NewAgent(x509pop.AgentConfig{
		CertificatePath:   na.Data["certificate_path"].(string),
		PrivateKeyPath:    na.Data["private_key_path"].(string),
		IntermediatesPath: na.Data["intermediates_path"].(string),
	})
	if err != nil {
		b.Fatal(err)
	}
	return func() (node.Session, error) { return a.Begin(context.Background()) }
}

type nopClose struct{ tokenSession }

func (nopClose) Close() error { return nil }

func benchCSR(b *testing.B) []byte {
	b.Helper()
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, testca.NewECKey(b))
	if err != nil {
		b.Fatal(err)
	}
	return csr
}

// BenchmarkAgentFirstSVID measures a new agent (empty data dir) from
// agent.New until a one-shot FetchX509SVIDs returns its workload's SVID:
// node attestation (join_token: the token; x509pop: a device certificate
// via its intermediate, and the challenge), the agent SVID, the first
// sync, the workload SVID. The workload's entry is registered beforehand
// under an alias that matches every new agent (join_token: the token's
// SPIFFE ID; x509pop: a node alias on x509pop:subject:cn). Credentials are
// made and agents stopped outside the timer. p50-ms, p99-ms.
func BenchmarkAgentFirstSVID(b *testing.B) {
	uidSel := fmt.Sprintf("uid:%d", os.Getuid())
	web := spiffeid.RequireFromSegments(stack.TrustDomain, "workload", "first")
	measure := func(b *testing.B, srv *stack.Server, next func(dir string) *config.Agent) {
		b.Helper()
		var lat stack.Latencies
		for i := 0; b.Loop(); i++ {
			b.StopTimer()
			cfg := next(filepath.Join(srv.Dir, fmt.Sprintf("agent-%d", i)))
			b.StartTimer()
			t0 := time.Now()
			a, err := stack.RunAgent(cfg)
			if err != nil {
				b.Fatal(err)
			}
			_, err = fetchUntil(a.Socket, web, 30*time.Second)
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
	b.Run("join_token", func(b *testing.B) {
		srv := stack.StartServer(b)
		alias := spiffeid.RequireFromSegments(stack.TrustDomain, "bench", "node")
		srv.CreateEntries(b, stack.Entry(alias, web, uidSel))
		measure(b, srv, func(dir string) *config.Agent {
			return srv.AgentConfig(b, dir, srv.CreateJoinToken(b, alias))
		})
	})
	b.Run("x509pop", func(b *testing.B) {
		srv, ca := x509popServer(b)
		alias := spiffeid.RequireFromSegments(stack.TrustDomain, "bench", "devices")
		srv.CreateEntries(b, &types.Entry{
			SpiffeId:  adminclient.ProtoID(alias),
			ParentId:  adminclient.ProtoID(spiffeid.RequireFromSegments(stack.TrustDomain, "spire", "server")),
			Selectors: []*types.Selector{{Type: x509pop.Type, Value: "subject:cn:bench-device"}},
		}, stack.Entry(alias, web, uidSel))
		measure(b, srv, func(dir string) *config.Agent {
			cfg := srv.AgentConfig(b, dir, "")
			na, _ := ca.Device(b, dir, "bench-device")
			cfg.Plugins = slices.DeleteFunc(cfg.Plugins, func(p config.Plugin) bool { return p.Type == "NodeAttestor" })
			cfg.SetPlugin(config.NewPlugin("NodeAttestor", x509pop.Type, na.Data))
			return cfg
		})
	})
}
