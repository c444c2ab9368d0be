// Package k8spsat benchmarks k8s_psat node attestation against a real
// kube-apiserver (internal/testutil/kubetest): what an agent's first
// attestation costs with a projected service account token, against a
// join token on the same server, and the TokenReview request alone.
//
//	go test ./bench/k8spsat -run '^$' -bench . -benchtime 200x -count 5
//
// The server runs in-process (bench/internal/stack: SQLite, disk keys,
// join_token and k8s_psat with one cluster whose kubeconfig is a service
// account granted what the README says); etcd and kube-apiserver are
// processes on the same machine. Each op is, in turn (so all three see the
// same machine load):
//
//   - join_token: a new agent attests with a fresh join token over a new
//     TLS connection (internal/agent/client, as an agent's first start);
//   - k8s_psat: a new agent attests the same way with the projected token
//     of a pod of its own on a node of its own (a token the API server has
//     not reviewed yet, so its review cache does not help), which is a
//     TokenReview, a GET of the pod and one of the node, then the same
//     signing and SQLite writes as join_token;
//   - review: the TokenReview of another fresh token alone, by the same
//     client (internal/kubeapi) with the same credentials: the part of a
//     k8s_psat attestation that only the API server can shorten.
//
// The nodes, pods and tokens of the ops are created before the timed
// loop; ns/op includes none of it but is not meaningful (three
// operations); read the p50/p99 metrics.
package k8spsat

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/bench/internal/stack"
	"github.com/sigil-spiffe/sigil/internal/agent/client"
	"github.com/sigil-spiffe/sigil/internal/attest/node/k8spsat"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/kubeapi"
	"github.com/sigil-spiffe/sigil/internal/kubeapi/kubeconfig"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/kubetest"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m, testutil.Cleanup)) }

// op is what one iteration needs, made before the timer starts.
type op struct {
	joinToken   string
	psatToken   string // of the op's pod, for spire-server
	reviewToken string // of the same pod, reviewed alone
}

func BenchmarkK8sPSATAttestation(b *testing.B) {
	k := kubetest.Shared(b)
	ns := k.Namespace(b)
	k.ServiceAccount(b, ns, "spire-agent")
	k.ServiceAccount(b, ns, "sigil-server")
	k.Grant(b, ns, "sigil-server",
		kubetest.Rule("authentication.k8s.io", "tokenreviews", "create"),
		kubetest.Rule("", "pods", "get"),
		kubetest.Rule("", "nodes", "get"))
	kc := filepath.Join(testutil.ShortTempDir(b), "kubeconfig")
	if err := os.WriteFile(kc, []byte(k.KubeconfigToken(k.TokenRequest(b, ns, "sigil-server", kubetest.TokenOptions{}))), 0o600); err != nil {
		b.Fatal(err)
	}
	srv := stack.StartServer(b, config.NewPlugin("NodeAttestor", k8spsat.Type, map[string]any{
		"clusters": map[string]any{
			"prod": map[string]any{
				"service_account_allow_list": []string{ns + ":spire-agent"},
				"kube_config_file":           kc,
				"allowed_node_label_keys":    []string{"pool"},
				"allowed_pod_label_keys":     []string{"app"},
			},
		},
	}))
	bundle := srv.BundleCerts(b)
	review := kubeapi.New(kubeconfig.Loader(kc))
	defer review.Close()

	ops := make([]op, b.N)
	for i := range ops {
		node := k.Node(b, kubetest.NodeSpec{Labels: map[string]string{"pool": "edge"}})
		pod := k.Pod(b, kubetest.PodSpec{Namespace: ns, ServiceAccount: "spire-agent", NodeName: node.Name(),
			Labels: map[string]string{"app": "spire-agent"}, HostIP: "192.0.2.1"})
		tokens := [2]string{}
		for j := range tokens {
			tokens[j] = k.TokenRequest(b, ns, "spire-agent", kubetest.TokenOptions{Audiences: []string{k8spsat.DefaultAudience}, Pod: pod})
		}
		jt, _ := srv.JoinToken(b)
		ops[i] = op{joinToken: jt, psatToken: tokens[0], reviewToken: tokens[1]}
	}
	tokenDir := testutil.ShortTempDir(b)
	ctx := context.Background()
	var jtLat, psatLat, reviewLat stack.Latencies

	b.ResetTimer()
	for i := range b.N {
		o := ops[i]
		start := time.Now()
		attest(b, srv.Addr, bundle, func(c *client.Client, csr []byte) error {
			_, err := c.AttestJoinToken(ctx, o.joinToken, csr)
			return err
		})
		jtLat.Add(time.Since(start))

		// The agent half reads the token file, as at every attestation.
		path := filepath.Join(tokenDir, "token")
		b.StopTimer()
		if err := os.WriteFile(path, []byte(o.psatToken), 0o600); err != nil {
			b.Fatal(err)
		}
		agent, err := k8spsat.NewAgent(k8spsat.AgentConfig{Cluster: "prod", TokenPath: path})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start = time.Now()
		attest(b, srv.Addr, bundle, func(c *client.Client, csr []byte) error {
			s, err := agent.Begin(ctx)
			if err != nil {
				return err
			}
			defer s.Close()
			_, err = c.AttestAgent(ctx, k8spsat.Type, s, csr)
			return err
		})
		psatLat.Add(time.Since(start))

		start = time.Now()
		r, err := review.TokenReview(ctx, o.reviewToken, []string{k8spsat.DefaultAudience})
		if err != nil || !r.Authenticated {
			b.Fatalf("review: %+v, %v", r, err)
		}
		reviewLat.Add(time.Since(start))
	}
	b.StopTimer()

	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(jtLat.Percentile(50)), "join_token-p50-ms")
	b.ReportMetric(ms(jtLat.Percentile(99)), "join_token-p99-ms")
	b.ReportMetric(ms(psatLat.Percentile(50)), "k8s_psat-p50-ms")
	b.ReportMetric(ms(psatLat.Percentile(99)), "k8s_psat-p99-ms")
	b.ReportMetric(ms(reviewLat.Percentile(50)), "review-p50-ms")
	b.ReportMetric(ms(reviewLat.Percentile(99)), "review-p99-ms")
}

// attest dials the server on a new TLS connection, as an agent's first
// start, and runs do with a fresh key's CSR.
func attest(b *testing.B, addr string, bundle []*x509.Certificate, do func(*client.Client, []byte) error) {
	b.Helper()
	c, err := client.Dial(client.Config{Addr: addr, TrustDomain: stack.TrustDomain, Bundle: func() []*x509.Certificate { return bundle }})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		b.Fatal(err)
	}
	if err := do(c, csr); err != nil {
		b.Fatalf("attest: %v", err)
	}
}
