package client_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"

	"github.com/sigil-spiffe/sigil/internal/agent/client"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// bigSVIDServer answers every BatchNewX509SVID param with the same SVID,
// whose certificate carries enough DNS names to make a batch of 500 far
// larger than gRPC's 4 MiB receive limit; it records each call's size.
type bigSVIDServer struct {
	svidv1.UnimplementedSVIDServer
	chain [][]byte
	mu    sync.Mutex
	calls []int
}

func (s *bigSVIDServer) BatchNewX509SVID(_ context.Context, req *svidv1.BatchNewX509SVIDRequest) (*svidv1.BatchNewX509SVIDResponse, error) {
	s.mu.Lock()
	s.calls = append(s.calls, len(req.Params))
	s.mu.Unlock()
	resp := &svidv1.BatchNewX509SVIDResponse{}
	for range req.Params {
		resp.Results = append(resp.Results, &svidv1.BatchNewX509SVIDResponse_Result{
			Status: &types.Status{}, Svid: &types.X509SVID{CertChain: s.chain},
		})
	}
	return resp, nil
}

// An agent holding many SVIDs with many DNS names: the answer to one
// batch of 500 CSRs would exceed the 4 MiB a gRPC client accepts. The
// client sends the batch again in halves until each answer fits, and
// returns every SVID in request order; it never fails for the answer's
// size while one SVID fits.
func TestBatchNewX509SVIDSplitsAnswersTooLarge(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	ca := testca.New(t, testca.TrustDomain(td))
	var names []string
	for i := 0; i < 200; i++ {
		names = append(names, fmt.Sprintf("service-%03d.%s.example.org", i, strings.Repeat("x", 30)))
	}
	leaf := ca.SVID(t, spiffeid.RequireFromString("spiffe://example.org/w"), testca.DNSNames(names...))
	srv := &bigSVIDServer{chain: [][]byte{leaf.Certificates[0].Raw}}
	if n := len(leaf.Certificates[0].Raw) * client.MaxX509SVIDBatch; n < 5<<20 {
		t.Fatalf("a batch answer of %d bytes would fit: the test proves nothing", n)
	}

	addr := serveTLS(t, ca, func(gs *grpc.Server) { svidv1.RegisterSVIDServer(gs, srv) })
	cl, err := client.Dial(client.Config{Addr: addr, TrustDomain: td, Bundle: ca.Roots})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })

	_, csr := testca.CSR(t)
	reqs := make([]client.X509SVIDRequest, client.MaxX509SVIDBatch+3)
	for i := range reqs {
		reqs[i] = client.X509SVIDRequest{EntryID: fmt.Sprintf("entry-%04d", i), CSR: csr}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := cl.BatchNewX509SVID(ctx, reqs)
	if err != nil {
		t.Fatalf("BatchNewX509SVID: %v (calls %v)", err, srv.calls)
	}
	if len(res) != len(reqs) {
		t.Fatalf("%d results for %d requests", len(res), len(reqs))
	}
	for i, r := range res {
		if r.Err != nil || r.EntryID != reqs[i].EntryID || len(r.Chain) != 1 || len(r.Chain[0].DNSNames) != len(names) {
			t.Fatalf("result %d: entry %s, err %v, chain %d", i, r.EntryID, r.Err, len(r.Chain))
		}
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	// The first call, all 500, was answered but refused by the client.
	if srv.calls[0] != client.MaxX509SVIDBatch || len(srv.calls) < 4 {
		t.Fatalf("calls %v: want the full batch first, then halves", srv.calls)
	}
	t.Logf("calls (CSRs each): %v", srv.calls)
}
