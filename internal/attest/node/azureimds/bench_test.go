package azureimds_test

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/attest/node/azureimds"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil/cloudfake"
)

// BenchmarkVerify is the server's check of an attested document (base64,
// PKCS #7 with its two certificates, the RSA-2048 signature, the signer's
// host name, its chain to the root: two more RSA-2048 checks, the JSON
// content and its expiry), as Azure sends it with its intermediate. No
// Azure call in the loop.
func BenchmarkVerify(b *testing.B) {
	az := cloudfake.NewAzure(b)
	cfg, err := azureimds.ParseServerConfig(config.NewPlugin("NodeAttestor", azureimds.Type, az.IMDSServerPluginData(b, b.TempDir())).Data(), parseTemplate)
	if err != nil {
		b.Fatal(err)
	}
	s, err := azureimds.NewServer(cfg, azureimds.ServerOptions{TrustDomain: td, ParseTemplate: parseTemplate, ARM: noARM{}})
	if err != nil {
		b.Fatal(err)
	}
	vm := az.AddVM(&cloudfake.AzureVM{Name: "web-1"})
	m := az.AttestedDocument(vm, "bench", cloudfake.AzureDocument{})
	doc := azureimds.Document{Encoding: m["encoding"], Signature: m["signature"]}
	ctx := context.Background()
	cpu0 := cpuTime()
	for b.Loop() {
		if _, err := s.Verify(ctx, doc); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// cpuTime is the process's user and system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
