package awsiid_test

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/attest/node/awsiid"
)

// FuzzVerify feeds the server half's signature check (JSON, base64, the
// BER-to-DER re-encoding and the PKCS #7 parser) attestation data as it
// comes from the network, with the built-in certificates. It never panics,
// every error is a refusal (node.ErrInvalid or node.ErrRefused) of bounded
// length, and a success is only ever the real document AWS signed. Seeds:
// the real document with each signature form, and malformed variants.
func FuzzVerify(f *testing.F) {
	doc, sig, rsa2048 := realPayload(f)
	s, err := awsiid.NewServer(awsiid.ServerConfig{}, awsiid.ServerOptions{TrustDomain: td, ParseTemplate: parseTemplate, EC2: noEC2{}})
	if err != nil {
		f.Fatal(err)
	}
	enc := func(doc, sig, rsa2048 string) []byte {
		b, _ := json.Marshal(map[string]string{"document": doc, "signature": sig, "rsa2048": rsa2048})
		return b
	}
	der, _ := base64.StdEncoding.DecodeString(rsa2048)
	f.Add(enc(doc, sig, rsa2048))
	f.Add(enc(doc, "", rsa2048))
	f.Add(enc(doc, sig, ""))
	f.Add(enc(doc, "", base64.StdEncoding.EncodeToString(der[:len(der)/2])))
	f.Add(enc(doc, "", base64.StdEncoding.EncodeToString([]byte{0x30, 0x80, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02, 0xa0, 0x80, 0, 0})))
	f.Add([]byte(`{"document":"{}","signature":"AA=="}`))

	f.Fuzz(func(t *testing.T, payload []byte) {
		d, err := s.Verify(payload)
		if err != nil {
			if !errors.Is(err, node.ErrInvalid) && !errors.Is(err, node.ErrRefused) {
				t.Fatalf("an error that is not a refusal: %v", err)
			}
			if len(err.Error()) > 600 {
				t.Fatalf("a %d-byte error message: %.200s...", len(err.Error()), err)
			}
			return
		}
		if d.InstanceID != "i-0c5541936caf78c12" || d.AccountID != "189292791360" || d.Region != "ap-southeast-2" {
			t.Fatalf("verified a document AWS did not sign: %+v", d)
		}
	})
}
