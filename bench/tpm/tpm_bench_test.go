// Package tpm_test benchmarks TPM 2.0 operations against a software TPM
// (swtpm, one per benchmark): the tpm node attestation, the agent SVID key
// held in the TPM (KeyManager "tpm") against the same operations with a
// software key (KeyManager "disk"), as baselines of the same run.
//
//	go test ./bench/tpm -run '^$' -bench . -benchtime 200x -count 5
//
// swtpm is an emulator: a hardware TPM is slower (tens of milliseconds per
// ECC signature on discrete TPMs is common), so read the TPM figures as a
// lower bound of the cost.
package tpm_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/attest/node/tpm"
	"github.com/sigil-spiffe/sigil/internal/keys"
	"github.com/sigil-spiffe/sigil/internal/keys/tpmkey"
	"github.com/sigil-spiffe/sigil/internal/testutil/swtpm"
)

func TestMain(m *testing.M) { os.Exit(swtpm.Main(m)) }

func keyManagers(b *testing.B) map[string]keys.Manager {
	tp := swtpm.Shared(b).Start(b)
	tk, err := tpmkey.New(tpmkey.Config{TPMPath: tp.Socket, Directory: filepath.Join(b.TempDir(), "tpm")})
	if err != nil {
		b.Fatal(err)
	}
	dk, err := keys.NewDisk(filepath.Join(b.TempDir(), "disk"))
	if err != nil {
		b.Fatal(err)
	}
	return map[string]keys.Manager{"tpm": tk, "disk": dk}
}

// BenchmarkTPMKeySign: one ECDSA P-256 signature (what a TLS handshake
// with the agent SVID costs the agent), TPM-held key vs software key.
func BenchmarkTPMKeySign(b *testing.B) {
	for _, name := range []string{"disk", "tpm"} {
		b.Run("key="+name, func(b *testing.B) {
			k, err := keyManagers(b)[name].GenerateKey(context.Background(), "agent-svid-a", keys.ECP256)
			if err != nil {
				b.Fatal(err)
			}
			digest := sha256.Sum256([]byte("handshake transcript"))
			b.ResetTimer()
			for b.Loop() {
				if _, err := k.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkTPMKeyRenewal: the agent's own work for one agent SVID renewal
// (a new key under the other key ID, and the CSR it signs), TPM-held key
// vs software key on disk. The TLS handshake with the new SVID adds one
// more signature (BenchmarkTPMKeySign).
func BenchmarkTPMKeyRenewal(b *testing.B) {
	for _, name := range []string{"disk", "tpm"} {
		b.Run("key="+name, func(b *testing.B) {
			km := keyManagers(b)[name]
			ids := []string{"agent-svid-a", "agent-svid-b"}
			i := 0
			for b.Loop() {
				k, err := km.GenerateKey(context.Background(), ids[i%2], keys.ECP256)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// BenchmarkTPMAttestation: one whole tpm node attestation of one device,
// agent half (swtpm) and server half in-process, with and without a quote
// of 3 PCRs. server-ns/op is the server half's own time (excluding the
// agent's answer): its CPU cost per attestation.
func BenchmarkTPMAttestation(b *testing.B) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	tp := swtpm.Shared(b).Start(b)
	agent := tpm.NewAgent(tpm.AgentConfig{TPMPath: tp.Socket})
	ctx := context.Background()
	for _, c := range []struct {
		name string
		pcrs []int
	}{{"quote=none", nil}, {"quote=pcr0,7,16", []int{0, 7, 16}}} {
		b.Run(c.name, func(b *testing.B) {
			// Trust the EK by its certificate's manufacturer CA, the
			// usual deployment.
			dir := b.TempDir()
			data, err := os.ReadFile(tp.Image.IssuerCertPath())
			if err != nil {
				b.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "issuer.pem"), data, 0o600); err != nil {
				b.Fatal(err)
			}
			s, err := tpm.NewServer(td, tpm.ServerConfig{EKCAPath: dir, PCRSelection: c.pcrs})
			if err != nil {
				b.Fatal(err)
			}
			var agentTime time.Duration
			start := time.Now()
			for b.Loop() {
				t0 := time.Now()
				sess, err := agent.Begin(ctx)
				if err != nil {
					b.Fatal(err)
				}
				agentTime += time.Since(t0)
				res, err := s.Attest(ctx, sess.Payload(), func(ctx context.Context, ch []byte) ([]byte, error) {
					t1 := time.Now()
					defer func() { agentTime += time.Since(t1) }()
					return sess.Respond(ctx, ch)
				})
				if err != nil {
					b.Fatal(err)
				}
				if !strings.HasPrefix(res.AgentID.Path(), "/spire/agent/tpm/") {
					b.Fatalf("agent ID %s", res.AgentID)
				}
			}
			total := time.Since(start)
			b.ReportMetric(float64((total-agentTime).Nanoseconds())/float64(b.N), "server-ns/op")
			b.ReportMetric(float64(b.N)/total.Seconds(), "attestations/s")
		})
	}
}
