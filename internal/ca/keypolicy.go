package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
)

// The key policy: the public keys the CA certifies (X509-SVIDs, agent
// SVIDs, downstream CA certificates) are
//
//   - ECDSA on P-256 or P-384,
//   - RSA with a modulus of 2048 to 8192 bits,
//   - Ed25519.
//
// Every key a SPIRE or Sigil agent generates (ec-p256, ec-p384, rsa-2048,
// rsa-4096) is allowed. Refused: RSA under 2048 bits (too weak), RSA over
// 8192 bits (Go's TLS stack refuses such peer keys, and checking their
// signatures is a cheap way to burn server CPU), P-224 and P-521 (no TLS
// 1.3 signature scheme for P-224; BoringSSL-based peers such as Envoy do
// not offer P-521), and anything else Go parses (DSA, unknown algorithms).
// Ed25519 is allowed: go-spiffe (x509svid) and Go's TLS accept Ed25519
// SVIDs, and SPIRE's CA signs whatever key a CSR carries; peers whose TLS
// stack lacks Ed25519 simply cannot use such an SVID.
//
// SPIRE applies no policy of its own here, so a SPIRE server certifies keys
// Sigil refuses; Sigil refuses them when the CSR is parsed
// (InvalidArgument), before any credential is consumed.

// Bounds of the key policy for RSA moduli, in bits.
const (
	MinRSABits = 2048
	MaxRSABits = 8192
)

// MaxCSRSize bounds a DER CSR (one with a few hundred DNS names and an
// 8192-bit RSA key is well below it).
const MaxCSRSize = 64 << 10

// ErrKeyNotAllowed is wrapped by every error of CheckPublicKey.
var ErrKeyNotAllowed = errors.New("public key not allowed")

// CheckPublicKey enforces the key policy.
func CheckPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k == nil || k.Curve == nil {
			return fmt.Errorf("%w: missing ECDSA key", ErrKeyNotAllowed)
		}
		switch k.Curve {
		case elliptic.P256(), elliptic.P384():
			return nil
		}
		return fmt.Errorf("%w: ECDSA key on curve %s (allowed: P-256, P-384)", ErrKeyNotAllowed, k.Curve.Params().Name)
	case *rsa.PublicKey:
		if k == nil || k.N == nil {
			return fmt.Errorf("%w: missing RSA key", ErrKeyNotAllowed)
		}
		if n := k.N.BitLen(); n < MinRSABits || n > MaxRSABits {
			return fmt.Errorf("%w: RSA key of %d bits (allowed: %d to %d bits)", ErrKeyNotAllowed, n, MinRSABits, MaxRSABits)
		}
		return nil
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return fmt.Errorf("%w: malformed Ed25519 key", ErrKeyNotAllowed)
		}
		return nil
	case nil:
		return fmt.Errorf("%w: missing public key", ErrKeyNotAllowed)
	default:
		return fmt.Errorf("%w: unsupported key type %T (allowed: ECDSA P-256/P-384, RSA %d-%d bits, Ed25519)", ErrKeyNotAllowed, pub, MinRSABits, MaxRSABits)
	}
}

// ParseCSR parses a DER certificate request and applies the key policy.
// It does not check the CSR's signature (VerifyCSR does), so a caller can
// refuse a bad CSR cheaply and verify the signature later with the rest of
// the expensive work.
func ParseCSR(der []byte) (*x509.CertificateRequest, error) {
	if len(der) > MaxCSRSize {
		return nil, fmt.Errorf("CSR of %d bytes is too large (max %d)", len(der), MaxCSRSize)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, err
	}
	if err := CheckPublicKey(csr.PublicKey); err != nil {
		return nil, err
	}
	return csr, nil
}

// VerifyCSR is ParseCSR followed by the check of the CSR's self-signature
// (proof that the requester holds the private key).
func VerifyCSR(der []byte) (*x509.CertificateRequest, error) {
	csr, err := ParseCSR(der)
	if err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("invalid CSR signature: %w", err)
	}
	return csr, nil
}
