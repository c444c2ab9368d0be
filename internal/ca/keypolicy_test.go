package ca_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"strings"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/ca"
)

func mustCSR(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestKeyPolicy(t *testing.T) {
	ec := func(c elliptic.Curve) crypto.Signer {
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	rsaKey := func(bits int) crypto.Signer {
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		key  crypto.Signer
		want string // "" = allowed, else part of the refusal
	}{
		"P-256":    {ec(elliptic.P256()), ""},
		"P-384":    {ec(elliptic.P384()), ""},
		"RSA-2048": {rsaKey(2048), ""},
		"Ed25519":  {ed, ""},
		"P-224":    {ec(elliptic.P224()), "ECDSA key on curve P-224 (allowed: P-256, P-384)"},
		"P-521":    {ec(elliptic.P521()), "ECDSA key on curve P-521"},
		"RSA-1024": {rsaKey(1024), "RSA key of 1024 bits (allowed: 2048 to 8192 bits)"},
	} {
		t.Run(name, func(t *testing.T) {
			err := ca.CheckPublicKey(tc.key.Public())
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
			} else if !errors.Is(err, ca.ErrKeyNotAllowed) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want ErrKeyNotAllowed mentioning %q", err, tc.want)
			}
			der := mustCSR(t, tc.key)
			_, perr := ca.ParseCSR(der)
			_, verr := ca.VerifyCSR(der)
			if (perr == nil) != (tc.want == "") || (verr == nil) != (tc.want == "") {
				t.Fatalf("ParseCSR: %v, VerifyCSR: %v; want allowed=%v", perr, verr, tc.want == "")
			}
		})
	}
	if err := ca.CheckPublicKey(nil); !errors.Is(err, ca.ErrKeyNotAllowed) {
		t.Fatalf("nil key: %v", err)
	}
}

func TestVerifyCSRChecksSignature(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der := mustCSR(t, key)
	der[len(der)-1] ^= 0x01 // the last byte is in the signature
	if _, err := ca.ParseCSR(der); err != nil {
		t.Fatalf("ParseCSR checks the signature: %v", err)
	}
	if _, err := ca.VerifyCSR(der); err == nil || !strings.Contains(err.Error(), "invalid CSR signature") {
		t.Fatalf("VerifyCSR accepted a bad signature: %v", err)
	}
	if _, err := ca.ParseCSR(make([]byte, ca.MaxCSRSize+1)); err == nil || !strings.Contains(err.Error(), "too large") {
		t.Fatalf("oversized CSR: %v", err)
	}
}

// FuzzParseCSR: ParseCSR never panics, accepts only keys of the policy, and
// VerifyCSR accepts exactly what ParseCSR accepts and whose signature checks.
// The seed corpus (testdata/fuzz/FuzzParseCSR) holds CSRs for allowed and
// refused keys.
func FuzzParseCSR(f *testing.F) {
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, err := ca.ParseCSR(der)
		if err != nil {
			if csr != nil {
				t.Fatal("a CSR returned with an error")
			}
			if _, verr := ca.VerifyCSR(der); verr == nil {
				t.Fatal("VerifyCSR accepted what ParseCSR refused")
			}
			return
		}
		switch k := csr.PublicKey.(type) {
		case *ecdsa.PublicKey:
			if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
				t.Fatalf("accepted ECDSA curve %s", k.Curve.Params().Name)
			}
		case *rsa.PublicKey:
			if n := k.N.BitLen(); n < ca.MinRSABits || n > ca.MaxRSABits {
				t.Fatalf("accepted RSA key of %d bits", n)
			}
		case ed25519.PublicKey:
			if len(k) != ed25519.PublicKeySize {
				t.Fatalf("accepted Ed25519 key of %d bytes", len(k))
			}
		default:
			t.Fatalf("accepted key type %T", k)
		}
		_, verr := ca.VerifyCSR(der)
		if (verr == nil) != (csr.CheckSignature() == nil) {
			t.Fatalf("VerifyCSR %v disagrees with CheckSignature", verr)
		}
	})
}
