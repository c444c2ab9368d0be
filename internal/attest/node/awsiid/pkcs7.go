package awsiid

import (
	"crypto/rsa"
	"errors"
	"fmt"

	"github.com/sigil-spiffe/sigil/internal/attest/node/pkcs7"
)

// errPKCS7 prefixes what is wrong with a message's structure.
var errPKCS7 = pkcs7.ErrMalformed

// verifyPKCS7 checks that der is a SignedData whose one signature verifies
// with key, and returns the signed content. Errors wrapping errPKCS7 are
// malformed messages; others are signatures that do not verify.
//
// The key is the one the caller trusts for the document's region:
// certificates the message carries and the signer's issuer and serial
// number are ignored, so a message cannot choose the key it is checked
// with.
func verifyPKCS7(der []byte, key *rsa.PublicKey) ([]byte, error) {
	m, err := pkcs7.Parse(der)
	if err != nil {
		return nil, err
	}
	if err := m.Verify(key); err != nil {
		if errors.Is(err, pkcs7.ErrMalformed) {
			return nil, err
		}
		return nil, fmt.Errorf("the signature does not verify with the AWS certificate of the document's region")
	}
	return m.Content, nil
}
