// Package attest benchmarks node attestation while one source address
// floods the server with failed attestations: the latency of legitimate
// attestations (fresh join token, fresh TLS connection, as an agent's
// first start) from the same address, and the server process's CPU.
//
//	go test ./bench/attest -run '^$' -bench . -benchtime 300x -count 5
//
// The server is a real sigil-server process (SQLite, disk keys, default
// rate limits: `ratelimit { attestation = true }`, a failure burst of 20
// then 2/s per address); the flood runs in a child process (the test
// binary again), the legitimate agents in the benchmark process, all from
// 127.0.0.1.
package attest

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/bench/internal/stack"
	"github.com/sigil-spiffe/sigil/internal/agent/client"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// TestMain removes the sigil-server binary the benchmarks build. Run with
// floodEnv set, the test binary is the flood (floodChild) instead.
func TestMain(m *testing.M) {
	if os.Getenv(floodEnv) != "" {
		os.Exit(floodChild())
	}
	os.Exit(testutil.Main(m))
}

// The flood: floodStreams concurrent AttestAgent streams, perConn to a TLS
// connection, from 127.0.0.1, each sending a wrong join token again as
// soon as the previous attempt is answered (closed loop).
const (
	floodStreams = 2000
	// perConn bad attempts share a connection (the server allows 1000
	// concurrent streams per connection).
	perConn = 500
	// defaultBurst is the server's failure burst per address (the flood is
	// past it before the timer starts).
	defaultBurst = 20
	// opInterval paces the legitimate attestations (agents arriving one by
	// one during a sustained flood): -benchtime 300x is 30 s, longer than
	// the server's longest hold of a failed answer (30 s), so the timed
	// part sees the flood in its steady state. ns/op is this interval.
	opInterval = 100 * time.Millisecond
)

// BenchmarkAttestUnderFlood: per op, one agent attests with a valid join
// token over a new TLS connection (internal/agent/client, as at an agent's
// first start) from 127.0.0.1; one op every opInterval.
//
//   - no-flood: nothing else runs.
//   - flood: floodStreams bad attestations from the same address are in
//     flight the whole time, and the address's failure budget is spent.
//
// Metrics: p50-ms, p99-ms, max-ms of the attestations that succeeded;
// attested-% (100 = none refused); server-cpu-ms/op and server-cpu-% (the
// sigil-server process's CPU over the timed part, per op and as a share of
// one core; 10 ms resolution); flood-failures/s (bad attempts answered per
// second while timed); server-peak-rss-MB (the server's VmHWM at the end).
func BenchmarkAttestUnderFlood(b *testing.B) {
	b.Run("no-flood", func(b *testing.B) { benchAttest(b, 0) })
	b.Run("flood", func(b *testing.B) { benchAttest(b, floodStreams) })
	// More bad attempts in flight than the server holds back at once
	// (ratelimit.DefaultMaxHeld): the excess is answered at once, so the
	// flood runs as fast as its client can go.
	b.Run("flood=6000", func(b *testing.B) { benchAttest(b, 6000) })
}

func benchAttest(b *testing.B, streams int) {
	srv := stack.StartServerProcess(b)
	bundle := srv.BundleCerts(b)
	ctx := context.Background()

	// Untimed: a token and a CSR per op.
	tokens := make([]string, b.N)
	csrs := make([][]byte, b.N)
	for i := range b.N {
		resp, err := srv.Agent.CreateJoinToken(ctx, &agentv1.CreateJoinTokenRequest{Ttl: 3600})
		if err != nil {
			b.Fatal(err)
		}
		tokens[i] = resp.Value
		_, csrs[i] = testca.CSR(b)
	}

	var answered atomic.Int64
	if streams > 0 {
		stop := startFlood(b, srv, streams, &answered)
		defer stop()
		// Past the burst: from here on the address is over its budget.
		deadline := time.Now().Add(time.Minute)
		for answered.Load() <= 2*defaultBurst {
			if time.Now().After(deadline) {
				b.Fatalf("flood: only %d attempts answered in a minute", answered.Load())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	cpu0, err := stack.ProcessCPUTime(srv.Pid)
	if err != nil {
		b.Fatal(err)
	}
	answered0 := answered.Load()
	var lat stack.Latencies
	refused := 0
	b.ResetTimer()
	next := time.Now()
	for i := range b.N {
		time.Sleep(time.Until(next))
		next = next.Add(opInterval)
		start := time.Now()
		err := attestOnce(ctx, srv.Addr, bundle, tokens[i], csrs[i])
		d := time.Since(start)
		switch {
		case err == nil:
			lat.Add(d)
		case status.Code(err) == codes.ResourceExhausted:
			refused++
		default:
			b.Fatalf("attestation %d: %v", i, err)
		}
	}
	b.StopTimer()
	cpu1, err := stack.ProcessCPUTime(srv.Pid)
	if err != nil {
		b.Fatal(err)
	}
	elapsed := b.Elapsed()
	lat.Report(b)
	b.ReportMetric(100*float64(b.N-refused)/float64(b.N), "attested-%")
	b.ReportMetric(float64((cpu1-cpu0).Microseconds())/1000/float64(b.N), "server-cpu-ms/op")
	b.ReportMetric(100*(cpu1-cpu0).Seconds()/elapsed.Seconds(), "server-cpu-%")
	if streams > 0 {
		b.ReportMetric(float64(answered.Load()-answered0)/elapsed.Seconds(), "flood-failures/s")
	}
	if hwm, err := peakRSS(srv.Pid); err == nil {
		b.ReportMetric(float64(hwm)/(1<<20), "server-peak-rss-MB")
	}
}

// peakRSS reads the process's peak resident set size (VmHWM).
func peakRSS(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmHWM in /proc/<pid>/status")
}

// attestOnce attests with token as an agent does at its first start: a new
// TLS connection, AttestJoinToken, close.
func attestOnce(ctx context.Context, addr string, bundle []*x509.Certificate, token string, csr []byte) error {
	c, err := client.Dial(client.Config{Addr: addr, TrustDomain: stack.TrustDomain, Bundle: func() []*x509.Certificate { return bundle }})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.AttestJoinToken(ctx, token, csr)
	return err
}

// floodEnv, set in the environment of the test binary, makes it the flood
// process: "ADDR STREAMS BUNDLE-PEM-PATH".
const floodEnv = "SIGIL_BENCH_ATTEST_FLOOD"

// startFlood runs the flood in a child process (this test binary again),
// so that its thousands of goroutines do not share a Go scheduler with the
// legitimate agents being timed. answered follows the attempts the child
// has seen answered. The returned function stops the child and waits for
// it.
func startFlood(b *testing.B, srv *stack.Server, streams int, answered *atomic.Int64) func() {
	b.Helper()
	bundlePath := srv.WriteBundlePEM(b, filepath.Join(b.TempDir(), "bundle.pem"))
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %s", floodEnv, srv.Addr, streams, bundlePath))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if n, err := strconv.ParseInt(strings.TrimPrefix(sc.Text(), "answered "), 10, 64); err == nil {
				answered.Store(n)
			}
		}
	}()
	return func() {
		stdin.Close() // the child stops when its stdin closes
		<-done
		if err := cmd.Wait(); err != nil {
			b.Errorf("flood process: %v", err)
		}
	}
}

// floodChild is the flood process: closed-loop attempts with wrong tokens,
// perConn streams to a connection, until stdin closes; it prints the
// number of attempts answered every 50 ms.
func floodChild() int {
	var addr, bundlePath string
	var streams int
	if _, err := fmt.Sscanf(os.Getenv(floodEnv), "%s %d %s", &addr, &streams, &bundlePath); err != nil {
		fmt.Fprintln(os.Stderr, "flood:", err)
		return 2
	}
	bundle, err := x509bundle.Load(stack.TrustDomain, bundlePath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "flood:", err)
		return 2
	}
	tlsCfg := tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(spiffeid.RequireFromPath(stack.TrustDomain, "/spire/server")))
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		fmt.Fprintln(os.Stderr, "flood:", err)
		return 2
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		fmt.Fprintln(os.Stderr, "flood:", err)
		return 2
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); cancel() }()

	var answered, attested atomic.Int64
	var wg sync.WaitGroup
	for c := 0; c*perConn < streams; c++ {
		conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
		if err != nil {
			fmt.Fprintln(os.Stderr, "flood:", err)
			return 2
		}
		defer conn.Close()
		agents := agentv1.NewAgentClient(conn)
		for s := c * perConn; s < min(streams, (c+1)*perConn); s++ {
			wg.Go(func() {
				for n := 0; ctx.Err() == nil; n++ {
					err := badAttempt(ctx, agents, fmt.Sprintf("bad-%d-%d", s, n), csr)
					if ctx.Err() != nil {
						return
					}
					if err == nil {
						attested.Add(1)
					}
					answered.Add(1)
				}
			})
		}
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-tick.C:
			fmt.Printf("answered %d\n", answered.Load())
		}
	}
	wg.Wait()
	if attested.Load() > 0 {
		fmt.Fprintf(os.Stderr, "flood: %d wrong join tokens attested\n", attested.Load())
		return 1
	}
	return 0
}

func badAttempt(ctx context.Context, agents agentv1.AgentClient, token string, csr []byte) error {
	stream, err := agents.AttestAgent(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&agentv1.AttestAgentRequest{Step: &agentv1.AttestAgentRequest_Params_{Params: &agentv1.AttestAgentRequest_Params{
		Data:   &types.AttestationData{Type: "join_token", Payload: []byte(token)},
		Params: &agentv1.AgentX509SVIDParams{Csr: csr},
	}}}); err != nil {
		_, rerr := stream.Recv()
		return rerr
	}
	_, err = stream.Recv()
	return err
}
