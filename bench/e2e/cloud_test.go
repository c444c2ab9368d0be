package e2e

import (
	"context"
	"fmt"
	"testing"

	"github.com/sigil-spiffe/sigil/bench/internal/stack"
	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/attest/node/awsiid"
	"github.com/sigil-spiffe/sigil/internal/attest/node/azuremsi"
	"github.com/sigil-spiffe/sigil/internal/attest/node/gcpiit"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/cloudfake"
)

// payloadSession is an attestation's data read beforehand from a fake
// instance's metadata service; no challenge.
type payloadSession []byte

func (p payloadSession) Payload() []byte { return p }
func (payloadSession) Respond(context.Context, []byte) ([]byte, error) {
	return nil, fmt.Errorf("no challenge")
}
func (payloadSession) Close() error { return nil }

// begin runs an agent half once, outside the timer, and returns how to
// replay its payload.
func begin(b *testing.B, a interface {
	Begin(context.Context) (node.Session, error)
}) func() (node.Session, error) {
	b.Helper()
	s, err := a.Begin(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	p := payloadSession(s.Payload())
	return func() (node.Session, error) { return p, nil }
}

// BenchmarkCloudAttestation is BenchmarkAttestation for the cloud node
// attestors, with join_token as the same run's baseline: one in-process
// server (SQLite synchronous=FULL), agent/v1 AttestAgent over TLS, 8 at a
// time, each attestation a new instance (the cloud attestors are trust on
// first use). The agent halves' payloads (document and signatures, the
// identity token) are read from the fakes' metadata services before the
// timer; the server's calls to the fake cloud APIs (EC2 DescribeInstances
// with SigV4 through the AWS SDK; the GCP Compute API with use_instance_metadata
// off, so gcp_iit makes none; Azure Resource Manager: three GETs) are in
// the timed part, the fakes serving them in this process (cpu-us/op counts
// them). Reports attestations/s and cpu-us/op.
func BenchmarkCloudAttestation(b *testing.B) {
	b.Run("join_token", func(b *testing.B) {
		srv := stack.StartServer(b)
		c := bootstrapClient(b, srv)
		sessions := make([]func() (node.Session, error), b.N)
		for i := range sessions {
			token, _ := srv.JoinToken(b)
			sessions[i] = func() (node.Session, error) { return nopClose{tokenSession(token)}, nil }
		}
		runAttestations(b, c, "join_token", sessions)
	})
	b.Run("aws_iid", func(b *testing.B) {
		aws := cloudfake.NewAWS(b)
		srv := stack.StartServer(b, config.NewPlugin("NodeAttestor", awsiid.Type, aws.ServerPluginData(b, testutil.ShortTempDir(b))))
		c := bootstrapClient(b, srv)
		sessions := make([]func() (node.Session, error), b.N)
		for i := range sessions {
			inst := aws.AddInstance(&cloudfake.Instance{ID: fmt.Sprintf("i-%017x", i+1), Tags: map[string]string{"role": "web"}, SecurityGroups: map[string]string{"sg-0123abcd": "web"}})
			a, err := awsiid.NewAgent(awsiid.AgentConfig{MetadataEndpoint: inst.IMDSURL()})
			if err != nil {
				b.Fatal(err)
			}
			sessions[i] = begin(b, a)
		}
		runAttestations(b, c, awsiid.Type, sessions)
	})
	b.Run("gcp_iit", func(b *testing.B) {
		gcp := cloudfake.NewGCP(b)
		data := gcp.ServerPluginData(b, testutil.ShortTempDir(b))
		srv := stack.StartServer(b, config.NewPlugin("NodeAttestor", gcpiit.Type, data))
		c := bootstrapClient(b, srv)
		sessions := make([]func() (node.Session, error), b.N)
		for i := range sessions {
			inst := gcp.AddInstance(&cloudfake.GCPInstance{Name: fmt.Sprintf("vm-%d", i), ID: fmt.Sprintf("%d", 4071232845720010000+i)})
			a, err := gcpiit.NewAgent(gcpiit.AgentConfig{IdentityTokenHost: inst.MetadataHost()})
			if err != nil {
				b.Fatal(err)
			}
			sessions[i] = begin(b, a)
		}
		runAttestations(b, c, gcpiit.Type, sessions)
	})
	b.Run("azure_msi", func(b *testing.B) {
		az := cloudfake.NewAzure(b)
		srv := stack.StartServer(b, config.NewPlugin("NodeAttestor", azuremsi.Type, az.ServerPluginData()))
		c := bootstrapClient(b, srv)
		sessions := make([]func() (node.Session, error), b.N)
		for i := range sessions {
			vm := az.AddVM(&cloudfake.AzureVM{Name: fmt.Sprintf("vm-%d", i), NSG: "web"})
			a, err := azuremsi.NewAgent(azuremsi.AgentConfig{MetadataEndpoint: vm.IMDSURL()})
			if err != nil {
				b.Fatal(err)
			}
			sessions[i] = begin(b, a)
		}
		runAttestations(b, c, azuremsi.Type, sessions)
	})
}
