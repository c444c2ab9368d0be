package sds_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/agent/endpoints"
	"github.com/sigil-spiffe/sigil/internal/agent/sds"
	"github.com/sigil-spiffe/sigil/internal/attest/workload/unix"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

var (
	td      = spiffeid.RequireTrustDomainFromString("example.org")
	otherTD = spiffeid.RequireTrustDomainFromString("other.org")
	thirdTD = spiffeid.RequireTrustDomainFromString("third.org")
)

// waitLimit bounds every wait for something that normally takes
// milliseconds; nothing asserts on timing.
const waitLimit = 30 * time.Second

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// env is SDS on a real agent socket (endpoints, unix attestor) over a
// cache the test writes, and go-control-plane's client on it.
type env struct {
	cache  *cache.Cache
	clk    *clock.Fake
	cas    map[spiffeid.TrustDomain][]*testca.CA
	client secretv3.SecretDiscoveryServiceClient
	logs   *syncBuffer
}

type envOpts struct {
	disableSPIFFE bool
	noBundle      bool
}

func startEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	clk := clock.NewFake(time.Now())
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c := cache.New(cache.Config{TrustDomain: td, Clock: clk, Log: log})
	e := &env{cache: c, clk: clk, cas: map[spiffeid.TrustDomain][]*testca.CA{}, logs: logs}
	if !o.noBundle {
		e.rotateCA(t, td)
	}
	svc, err := sds.New(sds.Config{
		Cache: c, DefaultSVIDName: "default", DefaultBundleName: "ROOTCA", DefaultAllBundlesName: "ALL",
		DisableSPIFFECertValidation: o.disableSPIFFE, Log: log, Clock: clk,
	})
	if err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(testutil.ShortTempDir(t), "agent.sock")
	ep, err := endpoints.New(endpoints.Config{SocketPath: socket, Attestor: unix.New(unix.Config{}), Services: []endpoints.Service{svc}, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- ep.Run(ctx) }()
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", logs)
		}
	})
	select {
	case <-ep.Ready():
	case err := <-done:
		t.Fatalf("endpoints stopped: %v", err)
	}
	e.client = testutil.DialSDS(t, "unix://"+socket)
	return e
}

// rotateCA adds a new CA to a trust domain's bundle (the previous ones
// stay, as during a rotation) and sets the bundle in the cache.
func (e *env) rotateCA(t *testing.T, d spiffeid.TrustDomain) {
	t.Helper()
	e.cas[d] = append(e.cas[d], testca.New(t, testca.TrustDomain(d), testca.Subject(d.Name()+" CA "+strconv.Itoa(len(e.cas[d])+1))))
	if err := e.cache.SetBundle(e.bundle(d)); err != nil {
		t.Fatal(err)
	}
}

func (e *env) bundle(d spiffeid.TrustDomain) *spiffebundle.Bundle {
	b := spiffebundle.New(d)
	for _, ca := range e.cas[d] {
		b.AddX509Authority(ca.Cert)
	}
	return b
}

func (e *env) ca() *testca.CA { return e.cas[td][len(e.cas[td])-1] }

func mySelector() selector.Selector {
	return selector.Selector{Type: "unix", Value: "uid:" + strconv.Itoa(os.Getuid())}
}

// entry is an entry for this process (or, with sels, for those).
func entry(id, path string, created time.Time, sels ...selector.Selector) *cache.Entry {
	if len(sels) == 0 {
		sels = []selector.Selector{mySelector()}
	}
	return &cache.Entry{ID: id, SPIFFEID: spiffeid.RequireFromPath(td, path), ParentID: spiffeid.RequireFromPath(td, "/agent"),
		Selectors: sels, RevisionNumber: 1, CreatedAt: created}
}

// issue gives entries fresh SVIDs from the current CA.
func (e *env) issue(t *testing.T, entries ...*cache.Entry) map[string]*cache.X509SVID {
	t.Helper()
	now := e.clk.Now()
	out := map[string]*cache.X509SVID{}
	for _, en := range entries {
		s := e.ca().SVID(t, en.SPIFFEID, testca.Validity(now.Add(-time.Minute), now.Add(time.Hour)))
		out[en.ID] = &cache.X509SVID{Chain: s.Certificates, PrivateKey: s.PrivateKey}
	}
	if err := e.cache.SetX509SVIDs(out); err != nil {
		t.Fatal(err)
	}
	return out
}

func (e *env) setEntries(t *testing.T, entries ...*cache.Entry) {
	t.Helper()
	if err := e.cache.SetEntries(entries); err != nil {
		t.Fatal(err)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	t.Cleanup(cancel)
	return ctx
}

// envoyNode is an Envoy of the given version, with metadata.
func envoyNode(major, minor uint32, metadata map[string]any) *corev3.Node {
	n := testutil.EnvoyNode(major, minor)
	if metadata != nil {
		md, err := structpb.NewStruct(metadata)
		if err != nil {
			panic(err)
		}
		n.Metadata = md
	}
	return n
}

var request = testutil.SDSRequest

// ack acknowledges resp (or, with errMsg, rejects it keeping version prev).
func ack(resp *discoveryv3.DiscoveryResponse, names []string, prev, errMsg string) *discoveryv3.DiscoveryRequest {
	req := testutil.SDSAck(resp, names...)
	if errMsg != "" {
		req.VersionInfo = prev
		req.ErrorDetail = &rpcstatus.Status{Code: 3, Message: errMsg}
	}
	return req
}

// stream is an open StreamSecrets call.
type stream struct {
	t *testing.T
	s grpc.BidiStreamingClient[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]
}

func (e *env) open(t *testing.T) *stream {
	t.Helper()
	s, err := e.client.StreamSecrets(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	return &stream{t: t, s: s}
}

func (s *stream) send(req *discoveryv3.DiscoveryRequest) {
	s.t.Helper()
	if err := s.s.Send(req); err != nil {
		s.t.Fatalf("send: %v", err)
	}
}

func (s *stream) recv() *discoveryv3.DiscoveryResponse {
	s.t.Helper()
	resp, err := s.s.Recv()
	if err != nil {
		s.t.Fatalf("recv: %v", err)
	}
	return resp
}

var secrets = testutil.DecodeSecrets

// names lists the secrets' names in response order.
func names(ss []testutil.Secret) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.Name)
	}
	return out
}

// checkTLS checks a TLS certificate secret holds svid's chain and key.
func checkTLS(t *testing.T, s testutil.Secret, name string, svid *cache.X509SVID) {
	t.Helper()
	if s.Name != name || s.Kind != "tls_certificate" {
		t.Fatalf("secret %q (%s), want TLS certificate %q", s.Name, s.Kind, name)
	}
	if len(s.Certs) != len(svid.Chain) || !s.Certs[0].Equal(svid.Chain[0]) {
		t.Fatalf("%s: chain is not the SVID's", name)
	}
	signer, ok := s.Key.(crypto.Signer)
	if !ok || !svid.PrivateKey.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(signer.Public()) {
		t.Fatalf("%s: private key is not the SVID's", name)
	}
}

// spiffeTDs checks a SPIFFE validator context: its trust domains in order
// and their authorities.
func spiffeTDs(t *testing.T, s testutil.Secret, name string) ([]string, map[string][]*x509.Certificate) {
	t.Helper()
	if s.Name != name || s.Kind != "spiffe_validator" {
		t.Fatalf("secret %q (%s), want a SPIFFE validator context %q", s.Name, s.Kind, name)
	}
	return s.TrustDomainsOrder, s.TrustDomains
}

// trustedCA checks a trusted_ca context and returns its authorities.
func trustedCA(t *testing.T, s testutil.Secret, name string) []*x509.Certificate {
	t.Helper()
	if s.Name != name || s.Kind != "trusted_ca" {
		t.Fatalf("secret %q (%s), want a trusted_ca validation context %q", s.Name, s.Kind, name)
	}
	return s.Certs
}

func sameCerts(a []*x509.Certificate, cas []*testca.CA) bool {
	if len(a) != len(cas) {
		return false
	}
	for i := range a {
		if !a[i].Equal(cas[i].Cert) {
			return false
		}
	}
	return true
}
