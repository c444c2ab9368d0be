// Package x509pop implements X.509 proof-of-possession node attestation,
// wire- and configuration-compatible with SPIRE's "x509pop" plugins: a
// device provisioned out of band with a certificate (and its key) from a
// device CA proves that it holds the key, and gets an agent ID derived from
// the certificate.
//
// The exchange (payloads are JSON, byte strings base64 as encoding/json
// writes them, field names as SPIRE's):
//
//	agent   {"certificates": [leaf DER, intermediate DER, ...]}
//	server  verifies the chain to its ca_bundle_path(s) through the
//	        intermediates the agent sent, then challenges:
//	        {"ecdsa_signature": {"nonce": 32 random bytes}}   (ECDSA leaf)
//	        {"rsa_signature":   {"nonce": 32 random bytes}}   (RSA leaf)
//	agent   picks its own 32-byte nonce and signs
//	        SHA-256(server nonce || agent nonce) with the leaf's key:
//	        {"ecdsa_signature": {"nonce": ..., "r": ..., "s": ...}}
//	        {"rsa_signature":   {"nonce": ..., "signature": RSASSA-PSS/SHA-256}}
//	server  checks the signature with the leaf's public key; the agent ID is
//	        spiffe://<trust domain>/spire/agent/x509pop/<SHA-1 of the leaf DER>
//	        unless agent_path_template says otherwise.
//
// The node's selectors are x509pop:subject:cn:<leaf CN>,
// x509pop:ca:fingerprint:<SHA-1> of every CA certificate of the verified
// chains (intermediates and root), x509pop:serialnumber:<leaf serial, hex>
// and x509pop:san:<key>:<value> for every URI SAN
// x509pop://<trust domain>/<key>/<value> of the leaf.
//
// The proof can be repeated at will, so an agent attested this way renews
// its SVID by attesting again (node.Result.CanReattest): a device whose
// certificate expired or was replaced by one from another CA loses its
// identity at its next renewal. The agent half reads its files at every
// attestation, so a rotated device certificate is picked up without a
// restart.
//
// Both halves live here; the server half's agent_path_template engine is
// injected (see ServerOptions) so that sigil-agent does not link it.
package x509pop

import (
	"crypto/sha1" //nolint:gosec // the fingerprint is SHA-1 by SPIRE's definition, an identifier not a security boundary
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
)

// Type is the attestation type, the plugin name and the selector type.
const Type = "x509pop"

// Bounds on what either side accepts from the other.
const (
	// NonceSize is the size of both nonces (as SPIRE: exactly 32 bytes).
	NonceSize = 32
	// MaxPayloadSize bounds the attestation data: a leaf and up to
	// max_intermediates intermediates, base64 in JSON.
	MaxPayloadSize = 64 << 10
	// MaxMessageSize bounds a challenge and a response: a nonce and an
	// RSA signature of at most 16384 bits, base64 in JSON.
	MaxMessageSize = 8 << 10
	// DefaultMaxIntermediates is max_intermediates' default (as SPIRE).
	DefaultMaxIntermediates = 4
	// DefaultMaxRSAKeySize is max_rsa_key_size's default in bits (as SPIRE).
	DefaultMaxRSAKeySize = 8192
)

// attestationData is the payload: the device's certificate first, then
// intermediates toward the trusted root.
type attestationData struct {
	Certificates [][]byte `json:"certificates"`
}

// challenge is what the server sends: exactly one member is set, by the
// type of the leaf's key.
type challenge struct {
	RSASignature   *nonceChallenge `json:"rsa_signature"`
	ECDSASignature *nonceChallenge `json:"ecdsa_signature"`
}

type nonceChallenge struct {
	Nonce []byte `json:"nonce"`
}

// response is the agent's answer, with the member matching the challenge.
type response struct {
	RSASignature   *rsaResponse   `json:"rsa_signature"`
	ECDSASignature *ecdsaResponse `json:"ecdsa_signature"`
}

type rsaResponse struct {
	Nonce     []byte `json:"nonce"`
	Signature []byte `json:"signature"`
}

type ecdsaResponse struct {
	Nonce []byte `json:"nonce"`
	R     []byte `json:"r"`
	S     []byte `json:"s"`
}

// signedDigest is what the agent signs: SHA-256 over the server's nonce
// followed by the agent's.
func signedDigest(serverNonce, agentNonce []byte) ([]byte, error) {
	if len(serverNonce) != NonceSize {
		return nil, fmt.Errorf("the challenge nonce is %d bytes, not %d", len(serverNonce), NonceSize)
	}
	if len(agentNonce) != NonceSize {
		return nil, fmt.Errorf("the response nonce is %d bytes, not %d", len(agentNonce), NonceSize)
	}
	h := sha256.New()
	h.Write(serverNonce)
	h.Write(agentNonce)
	return h.Sum(nil), nil
}

// Fingerprint returns the SHA-1 of a certificate's DER, lowercase hex: the
// last segment of the default agent ID and the value of ca:fingerprint
// selectors.
func Fingerprint(der []byte) string {
	sum := sha1.Sum(der) //nolint:gosec // see the import
	return hex.EncodeToString(sum[:])
}

// SerialNumberHex returns a serial number as lowercase hex with an even
// number of digits (the serialnumber selector and .SerialNumberHex).
func SerialNumberHex(n *big.Int) string {
	if n == nil {
		return ""
	}
	s := n.Text(16)
	if len(s)%2 == 1 {
		s = "0" + s
	}
	return s
}

var errNoMember = errors.New("has neither rsa_signature nor ecdsa_signature")
