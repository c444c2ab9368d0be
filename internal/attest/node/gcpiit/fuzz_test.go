package gcpiit_test

import (
	"context"
	"errors"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/attest/node/gcpiit"
	"github.com/sigil-spiffe/sigil/internal/testutil/cloudfake"
)

// FuzzVerify feeds the server half's token check attestation data as it
// comes from the network, with the fake's Google keys. It never panics,
// every error is a refusal (node.ErrInvalid or node.ErrRefused) of bounded
// length, and a success is only ever the instance the fake signed for.
func FuzzVerify(f *testing.F) {
	g := cloudfake.NewGCP(f)
	inst := g.AddInstance(&cloudfake.GCPInstance{Name: "web-1", ID: "4071232845720010001"})
	s, err := gcpiit.NewServer(gcpiit.ServerConfig{ProjectIDAllowList: []string{"sigil-test-project"}, CertificatesURL: g.CertsURL()},
		gcpiit.ServerOptions{TrustDomain: td, ParseTemplate: parseTemplate})
	if err != nil {
		f.Fatal(err)
	}
	tok := inst.IdentityToken(f, gcpiit.DefaultAudience)
	f.Add([]byte(tok))
	f.Add([]byte(tok[:len(tok)-10]))
	f.Add([]byte("eyJhbGciOiJSUzI1NiIsImtpZCI6ImZha2UtZ29vZ2xlLWtleS0xIn0.e30.AAAA"))
	f.Add([]byte("a.b.c"))
	f.Fuzz(func(t *testing.T, payload []byte) {
		ce, _, err := s.Verify(context.Background(), payload)
		if err != nil {
			if !errors.Is(err, node.ErrInvalid) && !errors.Is(err, node.ErrRefused) {
				t.Fatalf("an error that is not a refusal: %v", err)
			}
			if len(err.Error()) > 600 {
				t.Fatalf("a %d-byte error message", len(err.Error()))
			}
			return
		}
		if ce.InstanceID != "4071232845720010001" || ce.ProjectID != "sigil-test-project" {
			t.Fatalf("verified a token Google did not sign: %+v", ce)
		}
	})
}
