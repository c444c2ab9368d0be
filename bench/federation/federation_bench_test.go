// Package federation_test benchmarks federation between two in-process
// sigil-servers (the app's wiring, SQLite, real sockets):
//
//   - BenchmarkBundleEndpoint: bundle endpoint requests per second over
//     https_spiffe, a new TLS connection per request as peers fetch (the
//     endpoint closes each after answering), against a baseline serving
//     the same bytes from memory over the same TLS (net/http alone, with
//     the endpoint's timeouts), in alternating rounds (-benchtime Nx: N
//     rounds of 400 requests to each).
//
//   - BenchmarkRotationToFederatedWorkload: from a new CA published in one
//     trust domain's bundle (what a CA rotation does when it prepares the
//     next CA) to that CA in the other domain's workload's bundle (go-spiffe
//     watching the Workload API of an in-process agent): "scheduled" waits
//     for the peer's refresher (refresh hint 5s, publications at random
//     points of its schedule), "refresh" asks for it at once (RefreshBundle,
//     `federation refresh`): the pipeline alone; the baseline "bundle-set"
//     sets the new bundle on the other domain's server by hand (bundle set:
//     store and push, no fetch).
//
//     go test ./bench/federation -run '^$' -bench . -benchtime 2s
package federation_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	trustdomainv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/trustdomain/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/bench/internal/stack"
	"github.com/sigil-spiffe/sigil/internal/adminclient"
	agentapp "github.com/sigil-spiffe/sigil/internal/app/agent"
	serverapp "github.com/sigil-spiffe/sigil/internal/app/server"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/inproc"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

var (
	cloudTD = spiffeid.RequireTrustDomainFromString("cloud.test")
	edgeTD  = spiffeid.RequireTrustDomainFromString("edge.test")
)

const hint = 5 * time.Second

// server is an in-process sigil-server with an https_spiffe bundle endpoint.
type server struct {
	*inproc.Server
	td  spiffeid.TrustDomain
	url string
}

func startServer(b *testing.B, td spiffeid.TrustDomain, peer *server) *server {
	b.Helper()
	dir := testutil.ShortTempDir(b)
	port, err := testutil.FreePort()
	if err != nil {
		b.Fatal(err)
	}
	cfg := inproc.ServerConfig(td, filepath.Join(dir, "data"), filepath.Join(dir, "api.sock"), 0)
	cfg.LogLevel = "ERROR"
	cfg.Federation = &config.Federation{BundleEndpoint: &config.BundleEndpoint{Address: "127.0.0.1", Port: port, RefreshHint: hint, Profile: config.ProfileHTTPSSPIFFE}}
	if peer != nil {
		u, _ := url.Parse(peer.url)
		cfg.Federation.FederatesWith = []config.FederatesWith{{TrustDomain: peer.td, BundleEndpointURL: u, Profile: config.ProfileHTTPSSPIFFE,
			EndpointSPIFFEID: spiffeid.RequireFromPath(peer.td, "/spire/server")}}
	}
	s := &server{Server: inproc.RunServer(b, cfg, nil, serverapp.Options{}), td: td, url: "https://127.0.0.1:" + strconv.Itoa(port)}
	select {
	case <-s.Srv.BundleEndpoint().Ready():
	case <-time.After(30 * time.Second):
		b.Fatal("bundle endpoint not listening")
	}
	return s
}

// roots are the server's X.509 authorities.
func (s *server) roots(b *testing.B) []*x509.Certificate { return s.Admin(b).BundleCerts(b) }

func BenchmarkBundleEndpoint(b *testing.B) {
	cloud := startServer(b, cloudTD, nil)
	serverID := spiffeid.RequireFromPath(cloudTD, "/spire/server")
	sigilAuth := x509bundle.FromX509Authorities(cloudTD, cloud.roots(b))

	// Baseline: the bytes Sigil serves, from memory, by net/http over TLS
	// with an SVID of the same kind (ECDSA P-256).
	body := fetchRaw(b, cloud.url, tlsconfig.TLSClientConfig(sigilAuth, tlsconfig.AuthorizeID(serverID)))
	ca := testca.New(b, testca.TrustDomain(cloudTD))
	svid := ca.SVID(b, serverID)
	baseAuth := ca.X509Bundle()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	base := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(body)
		}),
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{{Certificate: testca.DER(svid.Certificates...), PrivateKey: svid.PrivateKey}}},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	go func() { _ = base.ServeTLS(ln, "", "") }()
	b.Cleanup(func() { _ = base.Close() })
	baseURL := "https://" + ln.Addr().String()

	// Rounds alternate between the two servers, so that both see the same
	// load from the rest of the machine: each round makes fetchesPerRound
	// requests to each, from 8 goroutines.
	type target struct {
		url  string
		auth *x509bundle.Bundle
		rate []float64
	}
	targets := []*target{{url: cloud.url, auth: sigilAuth}, {url: baseURL, auth: baseAuth}}
	var ratios []float64
	for b.Loop() {
		for _, t := range targets {
			t.rate = append(t.rate, fetchRound(b, t.url, t.auth, serverID))
		}
		ratios = append(ratios, targets[0].rate[len(targets[0].rate)-1]/targets[1].rate[len(targets[1].rate)-1])
	}
	b.ReportMetric(median(targets[0].rate), "sigil-req/s")
	b.ReportMetric(median(targets[1].rate), "baseline-req/s")
	b.ReportMetric(median(ratios), "ratio")
}

const (
	fetchesPerRound = 400
	fetchers        = 8
)

// fetchRound makes fetchesPerRound requests to u from fetchers goroutines,
// each on a new TLS connection, the endpoint authenticated and the bundle
// parsed as go-spiffe's FetchBundle does (keep-alive off on the client,
// for the baseline's sake: Sigil's endpoint closes connections itself),
// and returns the rate.
func fetchRound(b *testing.B, u string, auth *x509bundle.Bundle, serverID spiffeid.ID) float64 {
	cfg := tlsconfig.TLSClientConfig(auth, tlsconfig.AuthorizeID(serverID))
	var wg sync.WaitGroup
	next := make(chan struct{}, fetchesPerRound)
	for range fetchesPerRound {
		next <- struct{}{}
	}
	close(next)
	t0 := time.Now()
	for range fetchers {
		wg.Go(func() {
			for range next {
				client := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true, ForceAttemptHTTP2: true}}
				resp, err := client.Get(u)
				if err != nil {
					b.Error(err)
					return
				}
				_, err = spiffebundle.Read(cloudTD, resp.Body)
				resp.Body.Close()
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return fetchesPerRound / time.Since(t0).Seconds()
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// fetchRaw GETs url over TLS and returns the body.
func fetchRaw(b *testing.B, u string, cfg *tls.Config) []byte {
	b.Helper()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
	resp, err := client.Get(u)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := spiffebundle.Parse(cloudTD, body); err != nil {
		b.Fatal(err)
	}
	return body
}

// bundleWatch follows the X.509 bundles a workload gets from its agent.
type bundleWatch struct {
	mu      sync.Mutex
	cond    *sync.Cond
	bundles *x509bundle.Set
	err     error
}

func (w *bundleWatch) OnX509ContextUpdate(c *workloadapi.X509Context) {
	w.mu.Lock()
	w.bundles = c.Bundles
	w.mu.Unlock()
	w.cond.Broadcast()
}

func (w *bundleWatch) OnX509ContextWatchError(err error) {
	w.mu.Lock()
	w.err = err
	w.mu.Unlock()
}

// waitCA waits until the workload's bundle of td holds ca.
func (w *bundleWatch) waitCA(td spiffeid.TrustDomain, ca *x509.Certificate, timeout time.Duration) error {
	deadline := time.AfterFunc(timeout, w.cond.Broadcast)
	defer deadline.Stop()
	end := time.Now().Add(timeout)
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		if w.bundles != nil {
			if bd, ok := w.bundles.Get(td); ok && bd.HasX509Authority(ca) {
				return nil
			}
		}
		if time.Now().After(end) {
			return fmt.Errorf("no bundle of %s with the new CA after %v (last watch error: %v)", td, timeout, w.err)
		}
		w.cond.Wait()
	}
}

func BenchmarkRotationToFederatedWorkload(b *testing.B) {
	// cloud publishes; edge federates with it (configuration), and runs an
	// agent whose workload (this process) federates with cloud.
	cloud := startServer(b, cloudTD, nil)
	edge := startServer(b, edgeTD, cloud)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	edge.Admin(b).SetFederatedBundle(b, spiffebundle.FromX509Authorities(cloudTD, cloud.roots(b)))
	agentID := spiffeid.RequireFromPath(edgeTD, "/agent")
	agent := edge.StartAgent(b, testutil.ShortTempDir(b), agentID, nil, agentapp.Options{})
	appID := spiffeid.RequireFromPath(edgeTD, "/app")
	e, err := adminclient.NewEntry(appID, agentID, "unix:uid:"+strconv.Itoa(os.Getuid()))
	if err != nil {
		b.Fatal(err)
	}
	e.FederatesWith = []string{cloudTD.Name()}
	edge.Admin(b).CreateEntries(b, e)
	w := &bundleWatch{}
	w.cond = sync.NewCond(&w.mu)
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(agent.SocketAddr()))
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	go func() { _ = client.WatchX509Context(ctx, w) }()
	if err := w.waitCA(cloudTD, cloud.roots(b)[0], time.Minute); err != nil {
		b.Fatal(err)
	}
	tds := trustdomainv1.NewTrustDomainClient(edge.Admin(b).Conn)

	// publish adds a new CA to cloud's bundle, as the CA does when it
	// prepares the next one.
	publish := func() *x509.Certificate {
		ca := testca.New(b, testca.TrustDomain(cloudTD))
		if _, err := cloud.Admin(b).Bundle.AppendBundle(ctx, &bundlev1.AppendBundleRequest{X509Authorities: []*types.X509Certificate{{Asn1: ca.Cert.Raw}}}); err != nil {
			b.Fatal(err)
		}
		return ca.Cert
	}
	// Modes: scheduled (edge's refresher fetches at its next attempt),
	// refresh (RefreshBundle at once: fetch, store, push), and the
	// baseline bundle-set (the operator sets cloud's new bundle on edge by
	// hand: store and push only).
	for _, mode := range []string{"scheduled", "refresh", "bundle-set"} {
		b.Run(mode, func(b *testing.B) {
			var total stack.Latencies
			for b.Loop() {
				if mode == "scheduled" {
					// A random point of edge's refresh schedule.
					b.StopTimer()
					time.Sleep(rand.N(hint))
					b.StartTimer()
				}
				if mode == "bundle-set" {
					b.StopTimer()
				}
				t0 := time.Now()
				ca := publish()
				switch mode {
				case "refresh":
					if _, err := tds.RefreshBundle(ctx, &trustdomainv1.RefreshBundleRequest{TrustDomain: cloudTD.Name()}); err != nil {
						b.Fatal(err)
					}
				case "bundle-set":
					roots := cloud.roots(b)
					b.StartTimer()
					t0 = time.Now()
					edge.Admin(b).SetFederatedBundle(b, spiffebundle.FromX509Authorities(cloudTD, roots))
				}
				if err := w.waitCA(cloudTD, ca, time.Minute); err != nil {
					b.Fatal(err)
				}
				total.Add(time.Since(t0))
			}
			total.Report(b)
		})
	}
}
