package azuremsi_test

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/attest/node/azuremsi"
	"github.com/sigil-spiffe/sigil/internal/attest/node/azuremsi/armapi"
	"github.com/sigil-spiffe/sigil/internal/testutil/cloudfake"
)

// BenchmarkVerify is the server's check of a managed identity token (RS256,
// 2048-bit key; JWT parsing, tenant, issuer, audience, lifetime) with Azure
// AD's keys already cached. No Azure call in the loop.
func BenchmarkVerify(b *testing.B) {
	az := cloudfake.NewAzure(b)
	vm := az.AddVM(&cloudfake.AzureVM{Name: "web-1"})
	cfg := azuremsi.ServerConfig{Tenants: []azuremsi.Tenant{{ID: cloudfake.AzureTenant}}, LoginEndpoint: az.URL(), ManagementEndpoint: az.URL()}
	s, err := azuremsi.NewServer(cfg, azuremsi.ServerOptions{TrustDomain: td, ParseTemplate: parseTemplate, ARM: armapi.New(cfg)})
	if err != nil {
		b.Fatal(err)
	}
	p := []byte(`{"token":"` + az.Token(b, vm, azuremsi.DefaultResourceID) + `"}`)
	ctx := context.Background()
	cpu0 := cpuTime()
	for b.Loop() {
		if _, _, err := s.Verify(ctx, p); err != nil {
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
