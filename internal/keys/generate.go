package keys

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
)

// Generate creates a new private key of type t ("" means ec-p256).
func Generate(t Type) (crypto.Signer, error) {
	switch t {
	case ECP256, "":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ECP384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case RSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case RSA4096:
		return rsa.GenerateKey(rand.Reader, 4096)
	}
	return nil, fmt.Errorf("unsupported key type %q", t)
}

// TypeOf reports the Type of a public key, or an error for key kinds and
// sizes no manager generates.
func TypeOf(pub crypto.PublicKey) (Type, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return ECP256, nil
		case elliptic.P384():
			return ECP384, nil
		}
		return "", fmt.Errorf("unsupported EC curve %s", k.Curve.Params().Name)
	case *rsa.PublicKey:
		switch k.N.BitLen() {
		case 2048:
			return RSA2048, nil
		case 4096:
			return RSA4096, nil
		}
		return "", fmt.Errorf("unsupported RSA key size %d", k.N.BitLen())
	}
	return "", fmt.Errorf("unsupported public key type %T", pub)
}
