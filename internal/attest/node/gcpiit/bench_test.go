package gcpiit_test

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/attest/node/gcpiit"
	"github.com/sigil-spiffe/sigil/internal/testutil/cloudfake"
)

// BenchmarkVerify is the server's check of an identity token (RS256 with a
// 2048-bit key, as Google's; JWT parsing, claims) with Google's keys
// already cached. No Google call in the loop.
func BenchmarkVerify(b *testing.B) {
	g := cloudfake.NewGCP(b)
	inst := g.AddInstance(&cloudfake.GCPInstance{Name: "web-1", ID: "4071232845720010001"})
	s, err := gcpiit.NewServer(gcpiit.ServerConfig{ProjectIDAllowList: []string{"sigil-test-project"}, CertificatesURL: g.CertsURL()},
		gcpiit.ServerOptions{TrustDomain: td, ParseTemplate: parseTemplate})
	if err != nil {
		b.Fatal(err)
	}
	tok := []byte(inst.IdentityToken(b, gcpiit.DefaultAudience))
	ctx := context.Background()
	cpu0 := cpuTime()
	for b.Loop() {
		if _, _, err := s.Verify(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
	if n := g.Calls("certs"); n != 1 {
		b.Fatalf("%d certificate fetches", n)
	}
}

// cpuTime is the process's user and system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
