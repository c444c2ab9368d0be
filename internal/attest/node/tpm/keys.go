package tpm

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/rsa"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// publicKey converts a TPM public area to a Go public key, accepting only
// RSA 2048/3072/4096 with exponent 65537 and ECC P-256/P-384 points on
// their curve.
func publicKey(p *tpm2.TPMTPublic) (crypto.PublicKey, error) {
	switch p.Type {
	case tpm2.TPMAlgRSA:
		parms, err := p.Parameters.RSADetail()
		if err != nil {
			return nil, errors.New("RSA key without RSA parameters")
		}
		n, err := p.Unique.RSA()
		if err != nil {
			return nil, errors.New("RSA key without modulus")
		}
		k, err := tpm2.RSAPub(parms, n)
		if err != nil {
			return nil, err
		}
		switch bits := k.N.BitLen(); {
		case bits != int(parms.KeyBits):
			return nil, fmt.Errorf("RSA modulus of %d bits in a %d-bit key", bits, parms.KeyBits)
		case bits != 2048 && bits != 3072 && bits != 4096:
			return nil, fmt.Errorf("RSA key of %d bits (want 2048, 3072 or 4096)", bits)
		case k.E != 65537:
			return nil, errors.New("RSA exponent is not 65537")
		}
		return k, nil
	case tpm2.TPMAlgECC:
		parms, err := p.Parameters.ECCDetail()
		if err != nil {
			return nil, errors.New("ECC key without ECC parameters")
		}
		pt, err := p.Unique.ECC()
		if err != nil {
			return nil, errors.New("ECC key without point")
		}
		var curve ecdh.Curve
		var size int
		switch parms.CurveID {
		case tpm2.TPMECCNistP256:
			curve, size = ecdh.P256(), 32
		case tpm2.TPMECCNistP384:
			curve, size = ecdh.P384(), 48
		default:
			return nil, errors.New("ECC key on an unsupported curve (want NIST P-256 or P-384)")
		}
		if len(pt.X.Buffer) > size || len(pt.Y.Buffer) > size {
			return nil, errors.New("ECC point coordinates too long")
		}
		raw := make([]byte, 1+2*size)
		raw[0] = 4
		copy(raw[1+size-len(pt.X.Buffer):1+size], pt.X.Buffer)
		copy(raw[1+2*size-len(pt.Y.Buffer):], pt.Y.Buffer)
		if _, err := curve.NewPublicKey(raw); err != nil {
			return nil, errors.New("ECC point is not on the curve")
		}
		k, err := tpm2.ECDSAPub(parms, pt)
		if err != nil {
			return nil, err
		}
		return k, nil
	}
	return nil, errors.New("key is neither RSA nor ECC")
}

// samePublicKey reports whether a and b are the same key.
func samePublicKey(a, b crypto.PublicKey) bool {
	switch a := a.(type) {
	case *rsa.PublicKey:
		return a.Equal(b)
	case *ecdsa.PublicKey:
		return a.Equal(b)
	}
	return false
}

// checkEKPublic checks an EK's public area: a restricted decryption key
// fixed to its TPM, with a SHA-256 name and AES-128/256 CFB protection.
func checkEKPublic(p *tpm2.TPMTPublic) error {
	a := p.ObjectAttributes
	if !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin || !a.Restricted || !a.Decrypt || a.SignEncrypt {
		return errors.New("the EK is not a restricted decryption key fixed to its TPM")
	}
	if p.NameAlg != tpm2.TPMAlgSHA256 && p.NameAlg != tpm2.TPMAlgSHA384 {
		return errors.New("the EK's name algorithm is not SHA-256 or SHA-384")
	}
	var sym tpm2.TPMTSymDefObject
	switch p.Type {
	case tpm2.TPMAlgRSA:
		parms, err := p.Parameters.RSADetail()
		if err != nil {
			return errors.New("RSA EK without RSA parameters")
		}
		sym = parms.Symmetric
	case tpm2.TPMAlgECC:
		parms, err := p.Parameters.ECCDetail()
		if err != nil {
			return errors.New("ECC EK without ECC parameters")
		}
		sym = parms.Symmetric
	default:
		return errors.New("the EK is neither RSA nor ECC")
	}
	if sym.Algorithm != tpm2.TPMAlgAES {
		return errors.New("the EK does not protect with AES")
	}
	mode, err := sym.Mode.AES()
	if err != nil || *mode != tpm2.TPMAlgCFB {
		return errors.New("the EK does not protect with AES-CFB")
	}
	bits, err := sym.KeyBits.AES()
	if err != nil || (*bits != 128 && *bits != 256) {
		return errors.New("the EK does not protect with AES-128 or AES-256")
	}
	return nil
}

// checkAKPublic checks an AK's public area: a restricted signing key fixed
// to its TPM and generated in it, with a SHA-256 name, signing with
// ECDSA-SHA256 (P-256) or RSASSA-SHA256.
func checkAKPublic(p *tpm2.TPMTPublic) error {
	a := p.ObjectAttributes
	if !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin || !a.Restricted || !a.SignEncrypt || a.Decrypt {
		return errors.New("the AK is not a restricted signing key generated in and fixed to its TPM")
	}
	if p.NameAlg != tpm2.TPMAlgSHA256 {
		return errors.New("the AK's name algorithm is not SHA-256")
	}
	switch p.Type {
	case tpm2.TPMAlgECC:
		parms, err := p.Parameters.ECCDetail()
		if err != nil {
			return errors.New("ECC AK without ECC parameters")
		}
		if parms.CurveID != tpm2.TPMECCNistP256 || parms.Scheme.Scheme != tpm2.TPMAlgECDSA {
			return errors.New("an ECC AK must be a P-256 ECDSA key")
		}
		d, err := parms.Scheme.Details.ECDSA()
		if err != nil || d.HashAlg != tpm2.TPMAlgSHA256 {
			return errors.New("an ECC AK must sign with SHA-256")
		}
	case tpm2.TPMAlgRSA:
		parms, err := p.Parameters.RSADetail()
		if err != nil {
			return errors.New("RSA AK without RSA parameters")
		}
		if parms.Scheme.Scheme != tpm2.TPMAlgRSASSA {
			return errors.New("an RSA AK must be an RSASSA key")
		}
		d, err := parms.Scheme.Details.RSASSA()
		if err != nil || d.HashAlg != tpm2.TPMAlgSHA256 {
			return errors.New("an RSA AK must sign with SHA-256")
		}
	default:
		return errors.New("the AK is neither RSA nor ECC")
	}
	return nil
}
