package awsiid_test

import (
	"encoding/json"
	"syscall"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/attest/node/awsiid"
)

// BenchmarkVerify is the server's signature check of a real instance
// identity document (testdata) with the built-in certificates: the PKCS #7
// rsa2048 form (BER re-encoding, SignedData parsing, signed attributes,
// RSA-2048 verification) and the RSA-SHA256 form (RSA-1024 over the
// document), JSON decoding and document parsing included. No AWS call.
func BenchmarkVerify(b *testing.B) {
	doc, sig, rsa2048 := realPayload(b)
	s, err := awsiid.NewServer(awsiid.ServerConfig{}, awsiid.ServerOptions{TrustDomain: td, ParseTemplate: parseTemplate, EC2: noEC2{}})
	if err != nil {
		b.Fatal(err)
	}
	for _, f := range []struct{ name, sig, rsa2048 string }{{"pkcs7", "", rsa2048}, {"rsa-sha256", sig, ""}} {
		p, _ := json.Marshal(map[string]string{"document": doc, "signature": f.sig, "rsa2048": f.rsa2048})
		b.Run(f.name, func(b *testing.B) {
			cpu0 := cpuTime()
			for b.Loop() {
				if _, err := s.Verify(p); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}

// cpuTime is the process's user and system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
