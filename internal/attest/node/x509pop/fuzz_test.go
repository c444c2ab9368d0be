package x509pop

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

// FuzzAttest feeds the server half attestation data and a challenge
// response from the network as they come. It never panics, every error is
// a refusal (node.ErrInvalid or node.ErrRefused) with a short message, and
// a success is only ever the device the test CA issued, answering with
// its own key. Seeds: a valid exchange and a few malformed ones.
func FuzzAttest(f *testing.F) {
	root := testca.New(f, testca.Subject("Fuzz Root"))
	inter := root.Intermediate(f, testca.Subject("Fuzz Issuing"))
	dir := f.TempDir()
	bundle := testca.WriteCertsPEM(f, filepath.Join(dir, "ca.pem"), root.Cert)
	srv, err := NewServer(ServerConfig{CABundlePath: bundle}, ServerOptions{TrustDomain: td})
	if err != nil {
		f.Fatal(err)
	}
	leaf, key := inter.Leaf(f, testca.Subject("fuzz-device"))
	a, err := NewAgent(AgentConfig{
		CertificatePath: testca.WriteCertsPEM(f, filepath.Join(dir, "d.crt"), leaf, inter.Cert),
		PrivateKeyPath:  testca.WriteKeyPEM(f, filepath.Join(dir, "d.key"), key),
	})
	if err != nil {
		f.Fatal(err)
	}
	sess, err := a.Begin(context.Background())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(sess.Payload(), []byte(`{"ecdsa_signature":{"nonce":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","r":"AQ==","s":"AQ=="}}`), true)
	f.Add(sess.Payload(), []byte(`{}`), false)
	f.Add([]byte(`{"certificates":[]}`), []byte(nil), false)
	f.Add([]byte(`{"certificates":["MIIB"]}`), []byte(nil), false)
	f.Add([]byte(`[`), []byte(nil), false)

	f.Fuzz(func(t *testing.T, payload, answer []byte, sign bool) {
		ctx := context.Background()
		challenged := false
		res, err := srv.Attest(ctx, payload, func(ctx context.Context, ch []byte) ([]byte, error) {
			challenged = true
			if sign {
				// The device answers for real (the payload may still be
				// another chain than its own).
				s, err := a.Begin(ctx)
				if err != nil {
					return nil, err
				}
				return s.Respond(ctx, ch)
			}
			return answer, nil
		})
		if err != nil {
			if !errors.Is(err, node.ErrInvalid) && !errors.Is(err, node.ErrRefused) {
				t.Fatalf("error is neither invalid nor refused: %v", err)
			}
			if len(err.Error()) > 400 {
				t.Fatalf("error of %d bytes: %.100q...", len(err.Error()), err)
			}
			return
		}
		if !challenged || !sign || res == nil || res.AgentID.Path() != "/spire/agent/x509pop/"+Fingerprint(leaf.Raw) {
			t.Fatalf("attested without the device's proof: %+v (challenged %v, signed %v)", res, challenged, sign)
		}
	})
}
