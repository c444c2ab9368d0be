// Package nested_test benchmarks a nested (site) server issuing X509-SVIDs
// to an attested agent over the real agent API (BatchNewX509SVID on the
// site's TCP endpoint, mTLS with the agent SVID) with its root server up,
// and then with the root stopped (the site is cut off from its upstream).
// Signing needs no upstream, so the two rates should match.
//
//	go test ./bench/nested -run '^$' -bench . -benchtime=200ms
package nested_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/bench/internal/stack"
	"github.com/sigil-spiffe/sigil/internal/agent/client"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/test/nested"
)

// batch is the number of SVIDs per BatchNewX509SVID call.
const batch = 10

func BenchmarkSiteBatchNewX509SVID(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := testutil.ShortTempDir(b)
	rootCfg := nested.NewServerConfig(filepath.Join(dir, "root"), 0)
	root := nested.StartServer(b, "root", rootCfg)
	gw := nested.StartAgent(b, ctx, "root-agent", filepath.Join(dir, "ra"), root, "/site-gw")
	if err := root.CreateEntry(ctx, "/site-server", "/site-gw", true); err != nil {
		b.Fatal(err)
	}
	if _, err := gw.FetchX509SVID(ctx, nil); err != nil {
		b.Fatal(err)
	}
	siteCfg := nested.NewServerConfig(filepath.Join(dir, "site"), 0)
	siteCfg.SetPlugin(config.NewPlugin("UpstreamAuthority", "spire", map[string]any{"server_address": "127.0.0.1", "server_port": rootCfg.BindPort, "workload_api_socket": gw.Socket}))
	siteCfg.RateLimit.Signing = false // measure signing, not the limiter
	site := nested.StartServer(b, "site", siteCfg)

	c, reqs := attestBenchAgent(b, site)
	defer c.Close()

	run := func(b *testing.B) {
		// Warm up (and wait for the entries to reach the entry cache).
		deadline := time.Now().Add(30 * time.Second)
		for {
			if err := signAll(ctx, c, reqs); err == nil {
				break
			} else if time.Now().After(deadline) {
				b.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		b.ResetTimer()
		for b.Loop() {
			if err := signAll(ctx, c, reqs); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "svids/s")
	}
	b.Run("root=up", run)
	root.Stop()
	b.Run("root=down", run)
}

func signAll(ctx context.Context, c *client.Client, reqs []client.X509SVIDRequest) error {
	res, err := c.BatchNewX509SVID(ctx, reqs)
	if err != nil {
		return err
	}
	for _, r := range res {
		if r.Err != nil {
			return fmt.Errorf("entry %s: %w", r.EntryID, r.Err)
		}
	}
	return nil
}

// attestBenchAgent attests an agent to site with a join token through the
// agent client, registers batch entries under it and returns a client
// authenticated with the agent SVID and one request per entry.
func attestBenchAgent(b *testing.B, site *nested.Server) (*client.Client, []client.X509SVIDRequest) {
	b.Helper()
	const agentPath = "/bench-agent"
	agentID := spiffeid.RequireFromPath(nested.TrustDomain, agentPath)
	adm := site.Admin(b)
	c := stack.AttestClient(b, site.Addr(), adm.BundleCerts(b), adm.CreateJoinToken(b, agentID))

	var entries []*types.Entry
	for i := range batch {
		entries = append(entries, stack.Entry(agentID, spiffeid.RequireFromPath(nested.TrustDomain, fmt.Sprintf("/bench/w%d", i)), fmt.Sprintf("uid:%d", 10000+i)))
	}
	ids := adm.CreateEntries(b, entries...)
	var reqs []client.X509SVIDRequest
	for _, id := range ids {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		wcsr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
		if err != nil {
			b.Fatal(err)
		}
		reqs = append(reqs, client.X509SVIDRequest{EntryID: id, CSR: wcsr})
	}
	return c, reqs
}
