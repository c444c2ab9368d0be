package e2e

import (
	"context"
	"crypto/x509"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/agent/client"
	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/attest/node/x509pop"

	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// x509popDevice is a device's x509pop agent half, for attesting over gRPC
// without a sigil-agent.
func x509popDevice(t *testing.T, na *testutil.Plugin) *x509pop.Agent {
	t.Helper()
	a, err := x509pop.NewAgent(x509pop.AgentConfig{
		CertificatePath:   na.Data["certificate_path"].(string),
		PrivateKeyPath:    na.Data["private_key_path"].(string),
		IntermediatesPath: na.Data["intermediates_path"].(string),
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// responder is a client.Responder made of parts.
type responder struct {
	payload []byte
	respond func(context.Context, []byte) ([]byte, error)
}

func (r responder) Payload() []byte { return r.payload }
func (r responder) Respond(ctx context.Context, ch []byte) ([]byte, error) {
	return r.respond(ctx, ch)
}

// TestX509PoPOverGRPC: the challenge/response exchange against a real
// sigil-server over agent/v1 AttestAgent, with the server's answers: a
// device attests and re-attests (one agent record, reattestable); an
// expired certificate, one from another CA, one without its intermediate,
// an answer signed by another device's key and a replayed answer are
// refused (PermissionDenied) with the precise reason; oversized data is
// InvalidArgument.
func TestX509PoPOverGRPC(t *testing.T) {
	ca := testutil.NewDeviceCA(t, testutil.ShortTempDir(t))
	srv := testutil.StartServer(t, testutil.ServerConfig{Plugins: []testutil.Plugin{ca.ServerPlugin()}})
	roots := testca.ParseCertsPEM(t, srv.Admin(t).BundlePEM(t))
	c, err := client.Dial(client.Config{Addr: srv.Addr(), TrustDomain: srv.TrustDomain(), Bundle: func() []*x509.Certificate { return roots }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	csr := csrOf(t)
	attest := func(r client.Responder) (*client.Attestation, error) {
		return c.AttestAgent(ctx, x509pop.Type, r, csr)
	}
	begin := func(a *x509pop.Agent) node.Session {
		s, err := a.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	na, cert := ca.Device(t, testutil.ShortTempDir(t), "device-1")
	dev := x509popDevice(t, na)
	var answer []byte // a successful answer, to replay
	for i := range 2 {
		s := begin(dev)
		res, err := attest(responder{s.Payload(), func(ctx context.Context, ch []byte) ([]byte, error) {
			a, err := s.Respond(ctx, ch)
			answer = a
			return a, err
		}})
		if err != nil {
			t.Fatalf("attestation %d: %v", i+1, err)
		}
		if id, _ := x509svid.IDFromCert(res.Chain[0]); id != testutil.X509PoPAgentID(srv.TrustDomain(), cert) || !res.Reattestable {
			t.Fatalf("attestation %d: agent SVID for %s, reattestable %v", i+1, id, res.Reattestable)
		}
	}
	if n := len(srv.Admin(t).ListAgents(t)); n != 1 {
		t.Errorf("the server lists %d agents after one device attested twice", n)
	}

	other := testutil.NewDeviceCA(t, testutil.ShortTempDir(t))
	expiredNA, _ := ca.Device(t, testutil.ShortTempDir(t), "old", testca.Expired())
	strangerNA, _ := other.Device(t, testutil.ShortTempDir(t), "stranger")
	noInterNA, _ := ca.Device(t, testutil.ShortTempDir(t), "lonely")
	noInterNA.Data["intermediates_path"] = ""
	thiefNA, _ := ca.Device(t, testutil.ShortTempDir(t), "thief")
	thief := begin(x509popDevice(t, thiefNA))
	for _, tc := range []struct {
		name string
		r    client.Responder
		code codes.Code
		want string
	}{
		{"expired", begin(x509popDevice(t, expiredNA)), codes.PermissionDenied, `the device certificate "old"`},
		{"another CA of the same name", begin(x509popDevice(t, strangerNA)), codes.PermissionDenied, "is not signed by its key"},
		{"no intermediate", begin(x509popDevice(t, noInterNA)), codes.PermissionDenied, "the agent sent no intermediate certificates"},
		{"another device's key", responder{begin(dev).Payload(), thief.Respond}, codes.PermissionDenied, "not a signature of this attestation's challenge"},
		{"replayed answer", responder{begin(dev).Payload(), func(context.Context, []byte) ([]byte, error) { return answer, nil }}, codes.PermissionDenied, "already used in an earlier attestation"},
		{"oversized", responder{make([]byte, x509pop.MaxPayloadSize+1), nil}, codes.InvalidArgument, "more than 65536"},
	} {
		_, err := attest(tc.r)
		if err == nil || status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %s containing %q", tc.name, err, tc.code, tc.want)
		}
	}
	if n := len(srv.Admin(t).ListAgents(t)); n != 1 {
		t.Errorf("the server lists %d agents after refused attestations", n)
	}
}

// csrOf is a certificate request of a new key.
func csrOf(t *testing.T) []byte {
	t.Helper()
	_, csr := testca.CSR(t)
	return csr
}
