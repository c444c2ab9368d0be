package endpoints_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/server/ratelimit"
)

// A CSR whose key the CA refuses is InvalidArgument, and the join token it
// came with is still usable: nothing is consumed by a request that fails.
func TestAttestRefusedCSRKeyKeepsToken(t *testing.T) {
	h := newHarness(t, harnessOpts{rateLimit: ratelimit.Config{Attestation: true, Signing: true}})
	conn := h.anonConn()
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		key  crypto.Signer
		want string
	}{
		"RSA-1024": {rsa1024, "RSA key of 1024 bits"},
		"P-224":    {p224, "P-224"},
	} {
		t.Run(name, func(t *testing.T) {
			token := h.createToken(&agentv1.CreateJoinTokenRequest{})
			_, err := attestWith(conn, "join_token", []byte(token), csrFor(t, tc.key), tc.key)
			requireCode(t, err, codes.InvalidArgument)
			if msg := status.Convert(err).Message(); !strings.Contains(msg, tc.want) {
				t.Fatalf("message %q does not name the refused key (%q)", msg, tc.want)
			}
			if _, err := h.attest(conn, token, newKey(t)); err != nil {
				t.Fatalf("token unusable after a refused CSR: %v", err)
			}
		})
	}
}

// Concurrent attestations with one token: exactly one succeeds, and the
// node records that one's SVID.
func TestAttestTokenConcurrentUse(t *testing.T) {
	h := newHarness(t, harnessOpts{rateLimit: ratelimit.Config{Attestation: true, Signing: true}})
	token := h.createToken(&agentv1.CreateJoinTokenRequest{})
	const n = 8
	var ok atomic.Int32
	var winner atomic.Value
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range n {
		conn := h.anonConn()
		wg.Go(func() {
			<-start
			svid, err := h.attest(conn, token, newKey(t))
			if err == nil {
				ok.Add(1)
				winner.Store(svid.Certificates[0].SerialNumber.String())
				return
			}
			// The token consumed meanwhile (InvalidArgument) or, when
			// the winner committed before this one's check, its agent
			// attested already (PermissionDenied): both refuse.
			if c := status.Code(err); c != codes.InvalidArgument && c != codes.PermissionDenied {
				t.Errorf("losing attestation: %v, want InvalidArgument or PermissionDenied", err)
			}
		})
	}
	close(start)
	wg.Wait()
	if got := ok.Load(); got != 1 {
		t.Fatalf("%d attestations succeeded with one token, want exactly 1", got)
	}
	node, err := h.ds.GetNode(context.Background(), "spiffe://example.org/spire/agent/join_token/"+token)
	if err != nil {
		t.Fatal(err)
	}
	if node.CertSerial != winner.Load().(string) {
		t.Fatalf("node serial %s is not the winner's SVID %s", node.CertSerial, winner.Load())
	}
}

// When recording the node fails, the token is not consumed: consuming it
// and recording the node are one transaction.
func TestAttestNodeWriteFailureKeepsToken(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	db, err := sql.Open("sqlite", h.dsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, `CREATE TRIGGER fail_node BEFORE INSERT ON attested_nodes BEGIN SELECT RAISE(ABORT, 'injected failure'); END`); err != nil {
		t.Fatal(err)
	}
	token := h.createToken(&agentv1.CreateJoinTokenRequest{})
	conn := h.anonConn()
	_, err = h.attest(conn, token, newKey(t))
	requireCode(t, err, codes.Internal)
	if _, err := db.ExecContext(ctx, `DROP TRIGGER fail_node`); err != nil {
		t.Fatal(err)
	}
	if _, err := h.attest(conn, token, newKey(t)); err != nil {
		t.Fatalf("token unusable after a failed node write: %v", err)
	}
}

// A flood of failed attestations from one address never refuses a valid
// credential from that address: while thousands of bad join tokens are in
// flight from 127.0.0.1 and its failure budget is spent, agents at the same
// address with valid tokens all attest.
func TestValidAttestationUnderFailureFlood(t *testing.T) {
	const burst = 5
	h := newHarness(t, harnessOpts{
		realRateLimitClock: true,
		rateLimit:          ratelimit.Config{Attestation: true, Signing: true, FailureBurst: burst, FailureRate: 2},
	})
	key := newKey(t)
	badCSR := csrFor(t, key)

	// The flood: 2,000 concurrent streams over 4 connections from
	// 127.0.0.1, each retrying a wrong token as soon as it is answered.
	const conns, perConn = 4, 500
	floodCtx, stopFlood := context.WithCancel(context.Background())
	var sent, answered atomic.Int64
	var flood sync.WaitGroup
	defer func() { stopFlood(); flood.Wait() }()
	for c := range conns {
		conn := h.anonConn(fromIP("127.0.0.1"))
		for i := range perConn {
			flood.Go(func() {
				for n := 0; floodCtx.Err() == nil; n++ {
					sent.Add(1)
					_, err := attestCtx(floodCtx, conn, "join_token", []byte(fmt.Sprintf("bad-%d-%d-%d", c, i, n)), badCSR, key)
					if floodCtx.Err() != nil {
						return
					}
					if status.Code(err) == codes.OK {
						t.Errorf("a bad token attested")
						return
					}
					answered.Add(1)
				}
			})
		}
	}
	// Wait until the flood has spent the address's failure budget and
	// thousands of attempts were sent.
	waitFor(t, "the flood to spend the failure budget", func() bool {
		return answered.Load() > burst && sent.Load() >= conns*perConn
	})

	const agents = 20
	var legit sync.WaitGroup
	errs := make(chan error, agents)
	for range agents {
		token := h.createToken(&agentv1.CreateJoinTokenRequest{})
		conn := h.anonConn(fromIP("127.0.0.1"))
		legit.Go(func() {
			_, err := h.attest(conn, token, newKey(t))
			errs <- err
		})
	}
	legit.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("valid attestation during the flood: %v", err)
		}
	}
	if floodCtx.Err() != nil {
		t.Fatal("flood stopped before the valid attestations finished")
	}
}

// Every API that takes a CSR applies the CA's key policy when it parses
// the CSR: a refused key is InvalidArgument naming the key, never Internal
// (RSA-1024, which the CA refused at signing) nor a signed SVID (P-224).
func TestCSRKeyPolicyEverywhere(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	agentSVID, err := h.attest(h.anonConn(), h.createToken(&agentv1.CreateJoinTokenRequest{}), newKey(t))
	if err != nil {
		t.Fatal(err)
	}
	wl := h.createEntry(&datastore.Entry{SPIFFEID: "spiffe://example.org/workload/a", ParentID: agentSVID.ID.String(),
		Selectors: []selector.Selector{{Type: "unix", Value: "uid:1000"}}})
	downID := spiffeid.RequireFromPath(td, "/nested/server")
	h.createEntry(&datastore.Entry{SPIFFEID: downID.String(), ParentID: agentSVID.ID.String(), Downstream: true,
		Selectors: []selector.Selector{{Type: "unix", Value: "uid:0"}}})
	downSVID := h.mintSVID(downID)

	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for name, key := range map[string]crypto.Signer{"RSA-1024": rsa1024, "P-224": p224} {
		want := map[string]string{"RSA-1024": "RSA key of 1024 bits", "P-224": "curve P-224"}[name]
		check := func(api string, code codes.Code, msg string) {
			t.Helper()
			if code != codes.InvalidArgument || !strings.Contains(msg, want) {
				t.Errorf("%s with a %s CSR: %v %q, want InvalidArgument naming the key", api, name, code, msg)
			}
		}
		_, err := agentv1.NewAgentClient(h.svidConn(agentSVID)).RenewAgent(ctx, &agentv1.RenewAgentRequest{Params: &agentv1.AgentX509SVIDParams{Csr: csrFor(t, key)}})
		check("RenewAgent", status.Code(err), status.Convert(err).Message())

		resp, err := svidv1.NewSVIDClient(h.svidConn(agentSVID)).BatchNewX509SVID(ctx, &svidv1.BatchNewX509SVIDRequest{
			Params: []*svidv1.NewX509SVIDParams{{EntryId: wl.ID, Csr: csrFor(t, key)}},
		})
		if err != nil {
			t.Fatal(err)
		}
		check("BatchNewX509SVID", codes.Code(resp.Results[0].GetStatus().GetCode()), resp.Results[0].GetStatus().GetMessage())

		_, err = svidv1.NewSVIDClient(h.localConn()).MintX509SVID(ctx, &svidv1.MintX509SVIDRequest{Csr: csrFor(t, key, "spiffe://example.org/minted")})
		check("MintX509SVID", status.Code(err), status.Convert(err).Message())

		_, err = svidv1.NewSVIDClient(h.svidConn(downSVID)).NewDownstreamX509CA(ctx, &svidv1.NewDownstreamX509CARequest{Csr: csrFor(t, key)})
		check("NewDownstreamX509CA", status.Code(err), status.Convert(err).Message())
	}
}
