// Package tpm implements the tpm node attestor, both halves: an agent
// proves that it runs on a device with a TPM 2.0 the server trusts, by its
// endorsement key (EK), and optionally reports the device's measured boot
// state (PCR values) in a quote signed inside the TPM.
//
// The agent ID and selectors are those of SPIRE's community TPM plugin
// (spiffe/spire-tpm-plugin, formerly bloomberg/spire-tpm-plugin), so entries
// written for it work unchanged:
//
//	spiffe://<trust domain>/spire/agent/tpm/<pub hash>
//	tpm:pub_hash:<pub hash>
//
// where <pub hash> is the lowercase hex SHA-256 of the EK public key in
// PKIX (SubjectPublicKeyInfo) DER form. With a PCR selection configured the
// server adds one selector per selected PCR of the SHA-256 bank:
//
//	tpm:pcr:sha256:<index>:<lowercase hex value>
//
// The wire format is Sigil's own (the plugin's embeds go-attestation
// structures); all three messages are JSON objects whose byte fields are
// base64 (encoding/json's []byte), each message at most MaxMessageSize:
//
//	agent -> server, attestation data (type "tpm"):
//	  {"ek_cert": DER of the EK certificate from NV, when the TPM has one,
//	   "ek_public": TPMT_PUBLIC of the EK,
//	   "ak_public": TPMT_PUBLIC of a fresh attestation key (AK)}
//	server -> agent, challenge:
//	  {"credential_blob": TPM2B_ID_OBJECT contents, "encrypted_secret":
//	   TPM2B_ENCRYPTED_SECRET contents  (MakeCredential, done in software,
//	   of a fresh 32-byte secret to the EK, for the AK's name),
//	   "nonce": 32 random bytes, "pcrs": [PCR indexes of the SHA-256 bank]
//	   (both only with a PCR selection)}
//	agent -> server, response:
//	  {"secret": the secret ActivateCredential recovered in the TPM,
//	   "quote": TPMS_ATTEST of TPM2_Quote by the AK over the nonce and the
//	   PCRs, "signature": TPMT_SIGNATURE of the quote,
//	   "pcr_values": the PCR values, in ascending index order}
//
// The server accepts the EK when its public-key hash is allowed (an
// inline list, or a file of that name in ek_hash_path, as the plugin's
// hash_path) or when the EK certificate chains to a manufacturer CA
// certificate in ek_ca_path (the certificate's public key must be the
// EK's). The AK must be a restricted signing key fixed to its TPM; the
// TPM releases the secret only for a key with the AK's name loaded in the
// TPM that holds the EK's private key, which binds the AK to the EK. The
// quote is verified against the AK (TPM-generated, the server's nonce, the
// requested selection, the digest of the returned values), so the values
// are the TPM's. With pcr_allowed, a PCR listed there must have one of its
// listed values or the attestation is refused: a device whose boot chain
// changed cannot attest (or re-attest) any more.
//
// The agent half creates the AK as a primary key of the owner hierarchy
// from a template with random unique bytes, so the key is fresh for each
// attestation, is never stored, and can be re-created for the challenge
// without holding TPM handles between messages.
package tpm

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Type is the attestation type (and selector type, and plugin name).
const Type = "tpm"

// Limits on what either side accepts.
const (
	// MaxMessageSize bounds the attestation data, the challenge and the
	// response.
	MaxMessageSize = 16 << 10
	// maxPublicSize bounds a TPMT_PUBLIC (an RSA-4096 key is ~600 bytes).
	maxPublicSize = 1024
	// maxCertSize bounds the EK certificate (DER).
	maxCertSize = 8 << 10
	// maxBlobSize bounds the credential blob, encrypted secret, quote and
	// signature.
	maxBlobSize = 1024
	// secretSize and nonceSize are the sizes of the server's secret and
	// nonce.
	secretSize = 32
	nonceSize  = 32
	// MaxPCR is the highest PCR index (PC Client TPMs have 24).
	MaxPCR = 23
)

// attestationData is the agent's first message.
type attestationData struct {
	EKCert   []byte `json:"ek_cert,omitempty"`
	EKPublic []byte `json:"ek_public"`
	AKPublic []byte `json:"ak_public"`
}

// challenge is the server's only challenge.
type challenge struct {
	CredentialBlob  []byte `json:"credential_blob"`
	EncryptedSecret []byte `json:"encrypted_secret"`
	Nonce           []byte `json:"nonce,omitempty"`
	PCRs            []int  `json:"pcrs,omitempty"`
}

// response is the agent's answer.
type response struct {
	Secret    []byte   `json:"secret"`
	Quote     []byte   `json:"quote,omitempty"`
	Signature []byte   `json:"signature,omitempty"`
	PCRValues [][]byte `json:"pcr_values,omitempty"`
}

// decodeJSON decodes one bounded JSON object into v.
func decodeJSON(data []byte, what string, v any) error {
	if len(data) == 0 {
		return fmt.Errorf("empty %s", what)
	}
	if len(data) > MaxMessageSize {
		return fmt.Errorf("%s is %d bytes, more than %d", what, len(data), MaxMessageSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode %s: %w", what, err)
	}
	if dec.More() {
		return fmt.Errorf("decode %s: trailing data", what)
	}
	return nil
}

// decodeTPM decodes a TPM structure that must be exactly data (a
// re-encoding gives the same bytes: no trailing data, nothing the name or
// a signature would not cover). go-tpm's decoder is not hardened against
// hostile input: a panic is an error here.
func decodeTPM[T tpm2.Marshallable, P interface {
	*T
	tpm2.Unmarshallable
}](data []byte, what string) (v *T, err error) {
	defer func() {
		if r := recover(); r != nil {
			v, err = nil, fmt.Errorf("malformed %s", what)
		}
	}()
	v, err = tpm2.Unmarshal[T, P](data)
	if err != nil {
		return nil, fmt.Errorf("malformed %s: %w", what, err)
	}
	if !bytes.Equal(tpm2.Marshal(*v), data) {
		return nil, fmt.Errorf("malformed %s: not in canonical form", what)
	}
	return v, nil
}

// PubHash returns the community plugin's EK identifier: the lowercase hex
// SHA-256 of the public key's PKIX DER.
func PubHash(pub any) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("encode EK public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// AgentID returns spiffe://<td>/spire/agent/tpm/<pubHash>.
func AgentID(td spiffeid.TrustDomain, pubHash string) (spiffeid.ID, error) {
	if err := checkHash(pubHash); err != nil {
		return spiffeid.ID{}, err
	}
	return spiffeid.FromSegments(td, "spire", "agent", Type, pubHash)
}

// checkHash validates a pub hash: 64 lowercase hex digits.
func checkHash(h string) error {
	if len(h) != 2*sha256.Size {
		return errors.New("an EK public key hash is 64 hex digits")
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return errors.New("an EK public key hash is 64 lowercase hex digits")
		}
	}
	return nil
}
