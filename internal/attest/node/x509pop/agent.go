package x509pop

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/clip"
)

// AgentConfig is the plugin_data of the agent's NodeAttestor "x509pop",
// with SPIRE's keys. The files are read at every attestation.
type AgentConfig struct {
	// PrivateKeyPath (private_key_path): the device key, PEM (PKCS #8,
	// PKCS #1 or SEC 1).
	PrivateKeyPath string
	// CertificatePath (certificate_path): PEM, the device certificate
	// first, optionally followed by intermediates.
	CertificatePath string
	// IntermediatesPath (intermediates_path, optional): PEM intermediates
	// sent after those of CertificatePath.
	IntermediatesPath string
}

// Validate checks the configuration without reading any file.
func (c AgentConfig) Validate() error {
	var errs []error
	if c.PrivateKeyPath == "" {
		errs = append(errs, errors.New("private_key_path is required"))
	}
	if c.CertificatePath == "" {
		errs = append(errs, errors.New("certificate_path is required"))
	}
	return errors.Join(errs...)
}

// maxKeyFileSize bounds the private key file.
const maxKeyFileSize = 1 << 20

// Agent is the agent half: it presents the device certificate and answers
// the server's challenge with the device key.
type Agent struct {
	cfg AgentConfig
}

// NewAgent returns the agent half. It reads no file: Begin does, every
// time, so a device certificate rotated on disk is used at the next
// attestation.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("x509pop: %w", err)
	}
	return &Agent{cfg: cfg}, nil
}

// Type returns the attestation data type (the plugin's name), "x509pop".
func (a *Agent) Type() string { return Type }

// Load reads and checks the device certificate, intermediates and key:
// the key must match the certificate and be ECDSA or RSA. It is what Begin
// does first.
func (a *Agent) Load() (key crypto.Signer, chain []*x509.Certificate, err error) {
	key, chain, err = a.load()
	if err != nil {
		return nil, nil, fmt.Errorf("x509pop: %w", err)
	}
	return key, chain, nil
}

// loadError is a failure of load, with the plugin_data key of the file at
// fault.
type loadError struct {
	key string // "certificate_path", "private_key_path" or "intermediates_path"
	err error
}

func (e *loadError) Error() string { return e.key + ": " + e.err.Error() }
func (e *loadError) Unwrap() error { return e.err }

func (a *Agent) load() (crypto.Signer, []*x509.Certificate, error) {
	certPEM, err := readFile(a.cfg.CertificatePath, maxCertFileSize)
	if err != nil {
		return nil, nil, &loadError{"certificate_path", err}
	}
	keyPEM, err := readFile(a.cfg.PrivateKeyPath, maxKeyFileSize)
	if err != nil {
		return nil, nil, &loadError{"private_key_path", err}
	}
	// tls.X509KeyPair parses PKCS #8, PKCS #1 and SEC 1 keys and checks
	// the key is the certificate's.
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, nil, &loadError{"private_key_path", fmt.Errorf("device certificate %s and key %s: %w", a.cfg.CertificatePath, a.cfg.PrivateKeyPath, err)}
	}
	var chain []*x509.Certificate
	for i, der := range pair.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, nil, &loadError{"certificate_path", fmt.Errorf("%s: certificate %d: %w", a.cfg.CertificatePath, i+1, err)}
		}
		chain = append(chain, c)
	}
	if a.cfg.IntermediatesPath != "" {
		more, err := LoadCertificates(a.cfg.IntermediatesPath)
		if err != nil {
			return nil, nil, &loadError{"intermediates_path", err}
		}
		chain = append(chain, more...)
	}
	switch k := pair.PrivateKey.(type) {
	case *ecdsa.PrivateKey:
		return k, chain, nil
	case *rsa.PrivateKey:
		return k, chain, nil
	}
	return nil, nil, &loadError{"private_key_path", fmt.Errorf("the key in %s is %T; x509pop proves ECDSA and RSA keys", a.cfg.PrivateKeyPath, pair.PrivateKey)}
}

// Begin reads the device certificate, intermediates and key and starts an
// attestation.
func (a *Agent) Begin(ctx context.Context) (node.Session, error) {
	key, chain, err := a.Load()
	if err != nil {
		return nil, err
	}
	data := attestationData{Certificates: make([][]byte, len(chain))}
	for i, c := range chain {
		data.Certificates[i] = c.Raw
	}
	payload, err := json.Marshal(data)
	if err != nil {
		return nil, fmt.Errorf("x509pop: encode attestation data: %w", err)
	}
	if len(payload) > MaxPayloadSize {
		return nil, fmt.Errorf("x509pop: the device certificate and %d intermediates take %d bytes, more than the %d a server accepts", len(chain)-1, len(payload), MaxPayloadSize)
	}
	return &session{key: key, payload: payload}, nil
}

// session is one attestation: one payload, one challenge.
type session struct {
	key      crypto.Signer
	payload  []byte
	answered bool
}

func (s *session) Payload() []byte { return s.payload }

func (s *session) Close() error { return nil }

// Respond signs SHA-256(server nonce || own nonce) with the device key.
func (s *session) Respond(_ context.Context, chBytes []byte) ([]byte, error) {
	if s.answered {
		return nil, errors.New("x509pop: the server sent a second challenge; x509pop has one")
	}
	s.answered = true
	if len(chBytes) > MaxMessageSize {
		return nil, fmt.Errorf("x509pop: challenge is %d bytes, more than %d", len(chBytes), MaxMessageSize)
	}
	var ch challenge
	if err := json.Unmarshal(chBytes, &ch); err != nil {
		return nil, fmt.Errorf("x509pop: challenge is not JSON: %s", clip.Cut(err.Error(), 100))
	}
	agentNonce := make([]byte, NonceSize)
	if _, err := rand.Read(agentNonce); err != nil {
		return nil, fmt.Errorf("x509pop: generate nonce: %w", err)
	}
	var resp response
	switch s.key.(type) {
	case *ecdsa.PrivateKey:
		if ch.ECDSASignature == nil {
			return nil, fmt.Errorf("x509pop: challenge %s for an ECDSA key", describeChallenge(ch))
		}
		digest, err := signedDigest(ch.ECDSASignature.Nonce, agentNonce)
		if err != nil {
			return nil, fmt.Errorf("x509pop: %w", err)
		}
		der, err := s.key.Sign(rand.Reader, digest, crypto.SHA256)
		if err != nil {
			return nil, fmt.Errorf("x509pop: sign challenge: %w", err)
		}
		var sig struct{ R, S *big.Int }
		if rest, err := asn1.Unmarshal(der, &sig); err != nil || len(rest) != 0 {
			return nil, errors.New("x509pop: the key's signature is not ASN.1 (r, s)")
		}
		resp.ECDSASignature = &ecdsaResponse{Nonce: agentNonce, R: sig.R.Bytes(), S: sig.S.Bytes()}
	case *rsa.PrivateKey:
		if ch.RSASignature == nil {
			return nil, fmt.Errorf("x509pop: challenge %s for an RSA key", describeChallenge(ch))
		}
		digest, err := signedDigest(ch.RSASignature.Nonce, agentNonce)
		if err != nil {
			return nil, fmt.Errorf("x509pop: %w", err)
		}
		sig, err := s.key.Sign(rand.Reader, digest, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256})
		if err != nil {
			return nil, fmt.Errorf("x509pop: sign challenge: %w", err)
		}
		resp.RSASignature = &rsaResponse{Nonce: agentNonce, Signature: sig}
	}
	return json.Marshal(resp)
}

func describeChallenge(ch challenge) string {
	switch {
	case ch.ECDSASignature != nil:
		return "asks for an ECDSA signature"
	case ch.RSASignature != nil:
		return "asks for an RSA signature"
	}
	return errNoMember.Error()
}
