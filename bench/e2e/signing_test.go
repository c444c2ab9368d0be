// Package e2e benchmarks a real Sigil server and agent assembled in-process
// (bench/internal/stack): signing throughput against a raw-crypto baseline,
// entry creation rate, Workload API latency, entry-to-workload propagation
// and agent start-up. bench/run.sh runs them with fixed flags.
//
//	go test ./bench/e2e -run '^$' -bench . -benchtime 2s -count 5
package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/bench/internal/stack"
	"github.com/sigil-spiffe/sigil/internal/agent/client"
)

// callers is the parallelism multiplier of the signing benchmarks: with
// GOMAXPROCS=2 there are 16 concurrent callers, the way many agents (or
// one agent's many in-flight batches) load a server.
const callers = 8

// csrPool is how many distinct CSRs (and keys) the benchmarks cycle
// through; generated before the timer starts.
const csrPool = 64

// BenchmarkSigning compares X509-SVID signing through the server's APIs
// with the raw cryptography, in one run so the ratios are meaningful on a
// noisy machine. The metric is svid/s (higher is better); bench/run.sh
// divides each API figure by raw's.
//
//   - raw: x509.CreateCertificate of an SVID-shaped leaf with an ECDSA P-256
//     CA key (CreateCertificate signs, then verifies its own signature).
//   - raw+csr: raw plus parsing the CSR and checking its signature, the
//     least any server must do per request.
//   - mint: MintX509SVID over the admin unix socket, one CSR per call.
//   - batch=N: BatchNewX509SVID over mTLS as an attested agent through
//     internal/agent/client, N CSRs per call, for N entries of that agent.
//   - mint-proc, batch=50-proc: the same against a sigil-server process.
//
// In-process, client and server share the process (and the CPUs), so the
// API figures also pay the client side: proto encoding, TLS, parsing the
// returned chain. The -proc variants also report server-cpu-us/svid, the
// server process's own CPU time per SVID (10 ms resolution).
func BenchmarkSigning(b *testing.B) {
	b.Run("raw", func(b *testing.B) { benchRaw(b, false) })
	b.Run("raw+csr", func(b *testing.B) { benchRaw(b, true) })
	b.Run("mint", func(b *testing.B) { benchMint(b, stack.StartServer(b)) })
	b.Run("batch=1", func(b *testing.B) { benchBatchNew(b, stack.StartServer(b), 1) })
	b.Run("batch=50", func(b *testing.B) { benchBatchNew(b, stack.StartServer(b), 50) })
	// The same against a real sigil-server process, to measure the
	// server's own CPU time per SVID (server-cpu-us/svid) apart from the
	// client's: the figure to compare with raw's cpu-us/svid.
	b.Run("mint-proc", func(b *testing.B) { benchMint(b, stack.StartServerProcess(b)) })
	b.Run("batch=50-proc", func(b *testing.B) { benchBatchNew(b, stack.StartServerProcess(b), 50) })
}

// testCSRs returns csrPool DER CSRs; with id set, each carries its URI SAN.
func testCSRs(b *testing.B, id func(i int) spiffeid.ID) [][]byte {
	b.Helper()
	out := make([][]byte, csrPool)
	for i := range out {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		tmpl := &x509.CertificateRequest{}
		if id != nil {
			tmpl.URIs = []*url.URL{id(i).URL()}
		}
		out[i], err = x509.CreateCertificateRequest(rand.Reader, tmpl, key)
		if err != nil {
			b.Fatal(err)
		}
	}
	return out
}

// reportRate reports svid/s (wall clock) and cpu-us/svid: the process's
// CPU time (client and server together) per SVID since cpu0.
func reportRate(b *testing.B, svids int64, cpu0 time.Duration) {
	cpu := stack.CPUTime() - cpu0
	b.ReportMetric(float64(svids)/b.Elapsed().Seconds(), "svid/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(svids), "cpu-us/svid")
}

// serverCPU returns a function reporting server-cpu-us/svid for a server
// process (nothing for an in-process server).
func serverCPU(b *testing.B, srv *stack.Server) func(svids int64) {
	if srv.Pid == 0 {
		return func(int64) {}
	}
	start, err := stack.ProcessCPUTime(srv.Pid)
	if err != nil {
		b.Fatal(err)
	}
	return func(svids int64) {
		end, err := stack.ProcessCPUTime(srv.Pid)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64((end-start).Microseconds())/float64(svids), "server-cpu-us/svid")
	}
}

func benchRaw(b *testing.B, checkCSR bool) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Country: []string{"US"}, Organization: []string{"SPIFFE"}},
		URIs:                  []*url.URL{spiffeid.RequireTrustDomainFromString("example.org").ID().URL()},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SubjectKeyId:          []byte{1, 2, 3, 4},
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		b.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		b.Fatal(err)
	}
	csrs := testCSRs(b, func(i int) spiffeid.ID {
		return spiffeid.RequireFromSegments(stack.TrustDomain, "raw", fmt.Sprint(i))
	})
	parsed := make([]*x509.CertificateRequest, len(csrs))
	for i, der := range csrs {
		if parsed[i], err = x509.ParseCertificateRequest(der); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Int64
	b.SetParallelism(1) // GOMAXPROCS goroutines: the best case for pure CPU work
	b.ResetTimer()
	cpu0 := stack.CPUTime()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := int(next.Add(1)) % len(csrs)
			csr := parsed[i]
			if checkCSR {
				var err error
				if csr, err = x509.ParseCertificateRequest(csrs[i]); err != nil {
					b.Error(err)
					return
				}
				if err := csr.CheckSignature(); err != nil {
					b.Error(err)
					return
				}
			}
			serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
			if err != nil {
				b.Error(err)
				return
			}
			now := time.Now()
			tmpl := &x509.Certificate{
				SerialNumber:          serial,
				Subject:               pkix.Name{Country: []string{"US"}, Organization: []string{"SPIFFE"}},
				URIs:                  csr.URIs,
				NotBefore:             now.Add(-10 * time.Second),
				NotAfter:              now.Add(time.Hour),
				KeyUsage:              x509.KeyUsageDigitalSignature,
				ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
				BasicConstraintsValid: true,
				AuthorityKeyId:        caCert.SubjectKeyId,
			}
			if _, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, csr.PublicKey, caKey); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportRate(b, int64(b.N), cpu0)
}

func benchMint(b *testing.B, srv *stack.Server) {
	csrs := testCSRs(b, func(i int) spiffeid.ID {
		return spiffeid.RequireFromSegments(stack.TrustDomain, "mint", fmt.Sprint(i))
	})
	// Warm the connection.
	if _, err := srv.SVID.MintX509SVID(context.Background(), &svidv1.MintX509SVIDRequest{Csr: csrs[0]}); err != nil {
		b.Fatal(err)
	}
	var next atomic.Int64
	b.SetParallelism(callers)
	b.ResetTimer()
	cpu0 := stack.CPUTime()
	reportServer := serverCPU(b, srv)
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			csr := csrs[int(next.Add(1))%len(csrs)]
			resp, err := srv.SVID.MintX509SVID(ctx, &svidv1.MintX509SVIDRequest{Csr: csr})
			if err != nil {
				b.Error(err)
				return
			}
			if len(resp.GetSvid().GetCertChain()) == 0 {
				b.Error("MintX509SVID returned no certificate")
				return
			}
		}
	})
	reportRate(b, int64(b.N), cpu0)
	reportServer(int64(b.N))
}

// benchBatchNew signs batch CSRs per call, as an attested agent, for
// entries parented to it. One op is one call (batch SVIDs).
func benchBatchNew(b *testing.B, srv *stack.Server, batch int) {
	c, agentID := srv.AttestedClient(b)
	const entries = 100
	var ids []string
	for start := 0; start < entries; start += 50 {
		es := make([]*types.Entry, 0, 50)
		for i := start; i < start+50; i++ {
			id := spiffeid.RequireFromSegments(stack.TrustDomain, "batch", fmt.Sprint(i))
			es = append(es, stack.Entry(agentID, id, fmt.Sprintf("uid:%d", 20000+i)))
		}
		ids = append(ids, srv.CreateEntries(b, es...)...)
	}
	csrs := testCSRs(b, nil) // the server takes the SPIFFE ID from the entry
	// The server's entry cache sees new entries asynchronously; wait until
	// the agent is authorized for all of them.
	reqs := func(k int64) []client.X509SVIDRequest {
		out := make([]client.X509SVIDRequest, batch)
		for j := range out {
			n := int(k)*batch + j
			out[j] = client.X509SVIDRequest{EntryID: ids[n%len(ids)], CSR: csrs[n%len(csrs)]}
		}
		return out
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		all := make([]client.X509SVIDRequest, len(ids))
		for i, id := range ids {
			all[i] = client.X509SVIDRequest{EntryID: id, CSR: csrs[i%len(csrs)]}
		}
		res, err := c.BatchNewX509SVID(context.Background(), all)
		if err != nil {
			b.Fatal(err)
		}
		failed := 0
		for _, r := range res {
			if r.Err != nil {
				failed++
			}
		}
		if failed == 0 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d entries still not signable: %v", failed, len(ids), res[0].Err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var next atomic.Int64
	b.SetParallelism(callers)
	b.ResetTimer()
	cpu0 := stack.CPUTime()
	reportServer := serverCPU(b, srv)
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			res, err := c.BatchNewX509SVID(ctx, reqs(next.Add(1)))
			if err != nil {
				b.Error(err)
				return
			}
			for _, r := range res {
				if r.Err != nil {
					b.Error(r.Err)
					return
				}
			}
		}
	})
	reportRate(b, int64(b.N)*int64(batch), cpu0)
	reportServer(int64(b.N) * int64(batch))
}
