package convert_test

import (
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/server/api/convert"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// fuzzSeedCert is a small self-signed CA certificate and its PKIX key.
func fuzzSeedCert(f *testing.F) (der, pub []byte) {
	f.Helper()
	ca := testca.New(f, testca.Serial(1), testca.Validity(time.Unix(0, 0), time.Unix(1<<32, 0)))
	pub, err := x509.MarshalPKIXPublicKey(ca.Key.Public())
	if err != nil {
		f.Fatal(err)
	}
	return ca.Cert.Raw, pub
}

// FuzzBundleFromProto feeds the bundle API's input parsing (trust domain,
// sequence number, refresh hint, X.509 authority DER, JWT key ID and PKIX
// key): it never panics, an accepted bundle is within the documented
// bounds and converts back unchanged, and an error never repeats more than
// clip.Max bytes of the trust domain or key ID it was given.
func FuzzBundleFromProto(f *testing.F) {
	der, pub := fuzzSeedCert(f)
	f.Add("fed.org", uint64(1), int64(300), der, "kid", pub)
	f.Add("spiffe://fed.org", uint64(1<<63), int64(0), der, "", pub)
	f.Add(strings.Repeat("a", 256), uint64(0), int64(-1), []byte("junk"), strings.Repeat("k", 300), []byte{})
	f.Add("spiffe://fed.org/path", uint64(7), int64(1), der[:len(der)/2], "k\x00", pub[:10])
	f.Fuzz(func(t *testing.T, tdName string, seq uint64, refresh int64, asn1 []byte, kid string, key []byte) {
		in := &types.Bundle{TrustDomain: tdName, SequenceNumber: seq, RefreshHint: refresh,
			X509Authorities: []*types.X509Certificate{{Asn1: asn1}},
			JwtAuthorities:  []*types.JWTKey{{KeyId: kid, PublicKey: key}}}
		b, err := convert.BundleFromProto(in)
		if err != nil {
			msg := err.Error()
			for _, v := range []string{tdName, kid} {
				if len(v) > clip.Max+8 && strings.Contains(msg, v[:clip.Max+8]) {
					t.Fatalf("error repeats %d+ bytes of the input: %.300q", clip.Max+8, msg)
				}
			}
			return
		}
		if n := len(b.TrustDomain); n == 0 || n > convert.MaxTrustDomainLength {
			t.Fatalf("accepted a %d-byte trust domain", n)
		}
		if b.SequenceNumber > convert.MaxSequenceNumber || b.RefreshHint < 0 {
			t.Fatalf("accepted sequence number %d, refresh hint %d", b.SequenceNumber, b.RefreshHint)
		}
		if _, err := x509.ParseCertificate(b.X509Authorities[0].ASN1); err != nil {
			t.Fatalf("accepted an X.509 authority that does not parse: %v", err)
		}
		if b.JWTKeys[0].KeyID == "" {
			t.Fatal("accepted a JWT key without a key ID")
		}
		out := convert.BundleToProto(b)
		if out.SequenceNumber != seq || out.RefreshHint != refresh || out.JwtAuthorities[0].KeyId != kid ||
			string(out.X509Authorities[0].Asn1) != string(asn1) || string(out.JwtAuthorities[0].PublicKey) != string(key) {
			t.Fatalf("round trip changed the bundle: %v -> %v", in, out)
		}
	})
}
