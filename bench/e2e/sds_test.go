package e2e

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/bench/internal/stack"
	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// BenchmarkSDS measures Envoy SDS on a release-built sigil-agent process
// (with a sigil-server process), through go-control-plane's generated
// client as Envoy speaks it, for a workload entry of this process's uid:
//
//   - StreamFirstResponse-proc: a new StreamSecrets stream on Envoy's open
//     connection, asking for the SVID (by SPIFFE ID) and ROOTCA, until the
//     first response: what an Envoy waits for a listener's secrets. The
//     caller is attested on every stream.
//   - FetchSecrets-proc: the same names with the unary FetchSecrets.
//   - WorkloadAPIFetchX509SVID-proc: the baseline, a warm go-spiffe
//     client's FetchX509SVID on the same agent (BenchmarkWorkloadAPI's).
//   - RotationPush-proc: an entry change (its DNS names, through the admin
//     API) until the open SDS stream receives the new certificate: server
//     commit, push to the agent, new key, CSR, signing, cache, SDS push.
//     The same change is watched on the Workload API (a go-spiffe X.509
//     watcher) at once: wlapi-p50-ms and wlapi-p99-ms are its latencies,
//     the baseline SDS's are compared to. Each op waits for both.
//
// Latency metrics: p50-ms, p99-ms, max-ms; agent-cpu-us/op is the agent
// process's CPU time per op (10 ms resolution).
func BenchmarkSDS(b *testing.B) {
	srv := stack.StartServerProcess(b)
	token, agentID := srv.JoinToken(b)
	id := spiffeid.RequireFromSegments(stack.TrustDomain, "workload", "envoy")
	entryIDs, err := srv.Client.CreateEntries(context.Background(), stack.Entry(agentID, id, fmt.Sprintf("uid:%d", os.Getuid())))
	if err != nil {
		b.Fatal(err)
	}
	agent := srv.StartAgentProcess(b, token)
	if _, err := fetchUntil(agent.Socket, id, 30*time.Second); err != nil {
		b.Fatal(err)
	}
	client := testutil.DialSDS(b, agent.Socket)
	names := []string{id.String(), "ROOTCA"}
	node := testutil.EnvoyNode(1, 34)

	b.Run("StreamFirstResponse-proc", func(b *testing.B) {
		benchCalls(b, agent.Pid, func() error {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			st, err := client.StreamSecrets(ctx)
			if err != nil {
				return err
			}
			if err := st.Send(testutil.SDSRequest(node, names...)); err != nil {
				return err
			}
			resp, err := st.Recv()
			if err == nil && len(resp.Resources) != len(names) {
				err = fmt.Errorf("%d secrets, want %d", len(resp.Resources), len(names))
			}
			return err
		})
	})
	b.Run("FetchSecrets-proc", func(b *testing.B) {
		benchCalls(b, agent.Pid, func() error {
			resp, err := client.FetchSecrets(context.Background(), testutil.SDSRequest(node, names...))
			if err == nil && len(resp.Resources) != len(names) {
				err = fmt.Errorf("%d secrets, want %d", len(resp.Resources), len(names))
			}
			return err
		})
	})
	// The baseline: the Workload API's FetchX509SVID on the same agent
	// (attestation and an answer from the cache, as the SDS calls).
	wl, err := workloadapi.New(context.Background(), workloadapi.WithAddr(agent.Socket))
	if err != nil {
		b.Fatal(err)
	}
	defer wl.Close()
	b.Run("WorkloadAPIFetchX509SVID-proc", func(b *testing.B) { benchFetchX509SVID(b, wl, id, agent.Pid) })
	b.Run("RotationPush-proc", func(b *testing.B) {
		benchRotationPush(b, srv, client, agent, entryIDs[0], id)
	})
}

func benchRotationPush(b *testing.B, srv *stack.Server, client secretv3.SecretDiscoveryServiceClient, agent *stack.AgentProcess, entryID string, id spiffeid.ID) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := client.StreamSecrets(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if err := st.Send(testutil.SDSRequest(testutil.EnvoyNode(1, 34), id.String())); err != nil {
		b.Fatal(err)
	}
	// sdsDNS delivers the DNS names of each certificate the stream gets,
	// acknowledging each response as Envoy does.
	sdsDNS := make(chan []string, 16)
	sdsErr := make(chan error, 1)
	go func() {
		for {
			resp, err := st.Recv()
			if err != nil {
				sdsErr <- err
				return
			}
			dns, err := leafDNSNames(resp)
			if err != nil {
				sdsErr <- err
				return
			}
			if err := st.Send(testutil.SDSAck(resp, id.String())); err != nil {
				sdsErr <- err
				return
			}
			sdsDNS <- dns
		}
	}()
	updates := stack.WatchX509(b, ctx, agent.Socket).Updates
	wlDNS := func(u *workloadapi.X509Context) ([]string, bool) {
		for _, s := range u.SVIDs {
			if s.ID == id {
				return s.Certificates[0].DNSNames, true
			}
		}
		return nil, false
	}

	// wait returns when both have served the certificate with dns ("":
	// any certificate, the first one).
	wait := func(dns string, t0 time.Time) (sds, wlapi time.Duration, err error) {
		timeout := time.After(30 * time.Second)
		has := func(names []string, ok bool) bool { return ok && (dns == "" || slices.Contains(names, dns)) }
		for sds == 0 || wlapi == 0 {
			select {
			case got := <-sdsDNS:
				if sds == 0 && has(got, true) {
					sds = time.Since(t0)
				}
			case u := <-updates:
				if names, ok := wlDNS(u); wlapi == 0 && has(names, ok) {
					wlapi = time.Since(t0)
				}
			case err := <-sdsErr:
				return 0, 0, fmt.Errorf("SDS stream: %w", err)
			case <-timeout:
				return 0, 0, fmt.Errorf("no certificate with %s after 30s (SDS %v, Workload API %v)", dns, sds, wlapi)
			}
		}
		return sds, wlapi, nil
	}
	if _, _, err := wait("", time.Now()); err != nil {
		b.Fatal(err)
	}

	var sdsLat, wlLat stack.Latencies
	agent0, err := stack.ProcessCPUTime(agent.Pid)
	if err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		i++
		dns := fmt.Sprintf("r%d.bench.example", i)
		t0 := time.Now()
		resp, err := srv.Client.Entry.BatchUpdateEntry(ctx, &entryv1.BatchUpdateEntryRequest{
			Entries:   []*types.Entry{{Id: entryID, DnsNames: []string{dns}}},
			InputMask: &types.EntryMask{DnsNames: true},
		})
		if err != nil || resp.GetResults()[0].GetStatus().GetCode() != 0 {
			b.Fatalf("update entry: %v %v", err, resp.GetResults())
		}
		s, w, err := wait(dns, t0)
		if err != nil {
			b.Fatal(err)
		}
		sdsLat.Add(s)
		wlLat.Add(w)
	}
	sdsLat.Report(b)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(wlLat.Percentile(50)), "wlapi-p50-ms")
	b.ReportMetric(ms(wlLat.Percentile(99)), "wlapi-p99-ms")
	agent1, err := stack.ProcessCPUTime(agent.Pid)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64((agent1-agent0).Microseconds())/float64(b.N), "agent-cpu-us/op")
}

// leafDNSNames decodes a response's one TLS certificate secret and returns
// its leaf's DNS names.
func leafDNSNames(resp *discoveryv3.DiscoveryResponse) ([]string, error) {
	if len(resp.Resources) != 1 {
		return nil, fmt.Errorf("%d secrets", len(resp.Resources))
	}
	s := &tlsv3.Secret{}
	if err := resp.Resources[0].UnmarshalTo(s); err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(s.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
	if blk == nil {
		return nil, fmt.Errorf("secret %q has no certificate", s.Name)
	}
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, err
	}
	return leaf.DNSNames, nil
}
