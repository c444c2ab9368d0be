package tpm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/tpmdev"
)

// TCG EK handles: the RSA-2048 EK's persistent handle and the NV index of
// its certificate (TCG EK Credential Profile, low range).
const (
	ekHandleRSA = tpm2.TPMHandle(0x81010001)
	ekCertNVRSA = tpm2.TPMHandle(0x01c00002)
)

// nvChunk is how much NV is read per command (below every TPM's
// TPM_PT_NV_BUFFER_MAX).
const nvChunk = 512

// AgentConfig is the agent's NodeAttestor "tpm" configuration.
type AgentConfig struct {
	// TPMPath (tpm_path) is the TPM: a character device or a unix socket
	// serving the TPM command protocol (swtpm); "" is /dev/tpmrm0.
	TPMPath string
}

// Agent is the agent half of the tpm node attestor.
type Agent struct {
	dev *tpmdev.Device
}

// NewAgent returns the agent half. It does not open the TPM.
func NewAgent(cfg AgentConfig) *Agent {
	return &Agent{dev: tpmdev.New(cfg.TPMPath)}
}

// Type returns the attestation type.
func (a *Agent) Type() string { return Type }

// Begin reads the EK (and its certificate, when the TPM has one) and
// creates a fresh AK, returning the session whose payload carries them.
func (a *Agent) Begin(ctx context.Context) (node.Session, error) {
	s := &session{dev: a.dev, akTemplate: akTemplate()}
	if err := a.dev.Do(ctx, func(t transport.TPM) error {
		ek, err := loadEK(t)
		if err != nil {
			return err
		}
		defer ek.close(t)
		s.ekPersistent = ek.persistent
		s.ekPublic = ek.public
		cert, err := readNV(t, ekCertNVRSA)
		if err != nil {
			return fmt.Errorf("read the EK certificate: %w", err)
		}
		ak, err := createAK(t, s.akTemplate)
		if err != nil {
			return err
		}
		tpmdev.Flush(t, ak.handle)
		s.akName = ak.name
		s.payload, err = json.Marshal(attestationData{EKCert: trimDER(cert), EKPublic: ek.public, AKPublic: ak.public})
		return err
	}); err != nil {
		return nil, fmt.Errorf("tpm attestation: %w", err)
	}
	return s, nil
}

// session is one attestation: the AK is re-created from its template (a
// primary key is a function of the hierarchy's seed and the template) for
// the challenge, so no TPM handle is held between messages.
type session struct {
	dev          *tpmdev.Device
	akTemplate   tpm2.TPMTPublic
	akName       []byte
	ekPublic     []byte
	ekPersistent bool
	payload      []byte
	answered     bool
}

func (s *session) Payload() []byte { return s.payload }

func (s *session) Close() error { return nil }

// Respond activates the credential (the AK and the EK in the TPM) and,
// when the server asks, quotes the requested PCRs over its nonce.
func (s *session) Respond(ctx context.Context, chBytes []byte) ([]byte, error) {
	if s.answered {
		return nil, errors.New("tpm attestation: the server sent a second challenge")
	}
	s.answered = true
	var ch challenge
	if err := decodeJSON(chBytes, "tpm challenge", &ch); err != nil {
		return nil, err
	}
	if err := checkChallenge(&ch); err != nil {
		return nil, err
	}
	var rsp response
	err := s.dev.Do(ctx, func(t transport.TPM) error {
		ak, err := createAK(t, s.akTemplate)
		if err != nil {
			return err
		}
		defer tpmdev.Flush(t, ak.handle)
		if !bytes.Equal(ak.name, s.akName) {
			return errors.New("the TPM re-created a different AK (was the TPM cleared?)")
		}
		ek, err := loadEK(t)
		if err != nil {
			return err
		}
		if !bytes.Equal(ek.public, s.ekPublic) {
			ek.close(t)
			return errors.New("the TPM's EK changed during attestation")
		}
		ac, err := tpm2.ActivateCredential{
			ActivateHandle: tpm2.AuthHandle{Handle: ak.handle, Name: tpm2.TPM2BName{Buffer: ak.name}, Auth: tpm2.PasswordAuth(nil)},
			KeyHandle:      tpm2.AuthHandle{Handle: ek.handle, Name: tpm2.TPM2BName{Buffer: ek.name}, Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, ekPolicy)},
			CredentialBlob: tpm2.TPM2BIDObject{Buffer: ch.CredentialBlob},
			Secret:         tpm2.TPM2BEncryptedSecret{Buffer: ch.EncryptedSecret},
		}.Execute(t)
		ek.close(t)
		if err != nil {
			return fmt.Errorf("activate credential: %w", err)
		}
		rsp.Secret = ac.CertInfo.Buffer
		if len(ch.PCRs) == 0 {
			return nil
		}
		rsp.Quote, rsp.Signature, rsp.PCRValues, err = quote(t, ak, ch.Nonce, ch.PCRs)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("tpm attestation: %w", err)
	}
	return json.Marshal(rsp)
}

// checkChallenge bounds what the agent hands to its TPM.
func checkChallenge(ch *challenge) error {
	switch {
	case len(ch.CredentialBlob) == 0 || len(ch.CredentialBlob) > maxBlobSize:
		return errors.New("tpm challenge: credential_blob missing or too large")
	case len(ch.EncryptedSecret) == 0 || len(ch.EncryptedSecret) > maxBlobSize:
		return errors.New("tpm challenge: encrypted_secret missing or too large")
	case len(ch.Nonce) > 64:
		return errors.New("tpm challenge: nonce too large")
	case len(ch.PCRs) > 0 && len(ch.Nonce) == 0:
		return errors.New("tpm challenge: PCRs without a nonce")
	case len(ch.PCRs) > MaxPCR+1:
		return errors.New("tpm challenge: too many PCRs")
	}
	for i, p := range ch.PCRs {
		if p < 0 || p > MaxPCR || (i > 0 && p <= ch.PCRs[i-1]) {
			return errors.New("tpm challenge: PCR indexes must be ascending, 0 to 23")
		}
	}
	return nil
}

// ekPolicy satisfies the TCG EK's policy (PolicySecret of the endorsement
// hierarchy, whose auth is empty by default).
func ekPolicy(t transport.TPM, handle tpm2.TPMISHPolicy, nonceTPM tpm2.TPM2BNonce) error {
	_, err := tpm2.PolicySecret{
		AuthHandle:    tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		PolicySession: handle,
		NonceTPM:      nonceTPM,
	}.Execute(t)
	return err
}

// loadedKey is a key in the TPM.
type loadedKey struct {
	handle     tpm2.TPMHandle
	name       []byte
	public     []byte // TPMT_PUBLIC
	persistent bool
}

func (k *loadedKey) close(t transport.TPM) {
	if !k.persistent {
		tpmdev.Flush(t, k.handle)
	}
}

// loadEK returns the RSA EK: the persistent one when provisioned, else
// created from the TCG default template (the same key: a primary key is
// a function of the endorsement seed and the template).
func loadEK(t transport.TPM) (*loadedKey, error) {
	rp, err := tpm2.ReadPublic{ObjectHandle: ekHandleRSA}.Execute(t)
	if err == nil {
		return &loadedKey{handle: ekHandleRSA, name: rp.Name.Buffer, public: rp.OutPublic.Bytes(), persistent: true}, nil
	}
	if !isHandleMissing(err) {
		return nil, fmt.Errorf("read the EK at 0x%08x: %w", uint32(ekHandleRSA), err)
	}
	cp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(tpm2.RSAEKTemplate),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("create the EK: %w", err)
	}
	return &loadedKey{handle: cp.ObjectHandle, name: cp.Name.Buffer, public: cp.OutPublic.Bytes()}, nil
}

// isHandleMissing reports a TPM error for a handle that does not exist.
func isHandleMissing(err error) bool {
	return errors.Is(err, tpm2.TPMRCHandle) || errors.Is(err, tpm2.TPMRCValue)
}

// akTemplate is an ECC P-256 restricted signing key (ECDSA-SHA256) with
// random unique bytes: a fresh primary key of the owner hierarchy.
func akTemplate() tpm2.TPMTPublic {
	x, y := make([]byte, 32), make([]byte, 32)
	_, _ = rand.Read(x)
	_, _ = rand.Read(y)
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			NoDA:                true,
			Restricted:          true,
			SignEncrypt:         true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: x},
			Y: tpm2.TPM2BECCParameter{Buffer: y},
		}),
	}
}

// createAK creates the AK of template under the owner hierarchy.
func createAK(t transport.TPM, template tpm2.TPMTPublic) (*loadedKey, error) {
	cp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(template),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("create the AK: %w", err)
	}
	return &loadedKey{handle: cp.ObjectHandle, name: cp.Name.Buffer, public: cp.OutPublic.Bytes()}, nil
}

// readNV reads a whole NV index; nil when the index is not defined.
func readNV(t transport.TPM, idx tpm2.TPMHandle) ([]byte, error) {
	pub, err := tpm2.NVReadPublic{NVIndex: idx}.Execute(t)
	if err != nil {
		if isHandleMissing(err) {
			return nil, nil
		}
		return nil, err
	}
	nv, err := pub.NVPublic.Contents()
	if err != nil {
		return nil, err
	}
	read := func(auth tpm2.AuthHandle) ([]byte, error) {
		var out []byte
		for off := uint16(0); off < nv.DataSize; {
			n := min(nv.DataSize-off, nvChunk)
			rsp, err := tpm2.NVRead{
				AuthHandle: auth,
				NVIndex:    tpm2.NamedHandle{Handle: idx, Name: pub.NVName},
				Size:       n,
				Offset:     off,
			}.Execute(t)
			if err != nil {
				return nil, err
			}
			out = append(out, rsp.Data.Buffer...)
			off += n
		}
		return out, nil
	}
	// The index's own authorization (AUTHREAD), else the owner's
	// (OWNERREAD): TPMs differ.
	out, err := read(tpm2.AuthHandle{Handle: idx, Name: pub.NVName, Auth: tpm2.PasswordAuth(nil)})
	if err != nil {
		out, err = read(tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)})
	}
	return out, err
}

// trimDER cuts the padding some TPMs leave after a DER certificate in NV.
func trimDER(b []byte) []byte {
	if len(b) < 4 || b[0] != 0x30 {
		return b
	}
	var n int
	switch b[1] {
	case 0x81:
		n = int(b[2]) + 3
	case 0x82:
		n = int(b[2])<<8 | int(b[3]) + 4
	default:
		return b
	}
	if n <= len(b) {
		return b[:n]
	}
	return b
}

// maxPCRRead is how many PCRs one PCR_Read returns at most.
const maxPCRRead = 8

// quote reads the PCRs and has the AK quote them over nonce; the values
// are read again if they changed in between.
func quote(t transport.TPM, ak *loadedKey, nonce []byte, pcrs []int) (q, sig []byte, values [][]byte, err error) {
	sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: pcrBitmap(pcrs)}}}
	for attempt := 0; attempt < 3; attempt++ {
		values, err = readPCRs(t, pcrs)
		if err != nil {
			return nil, nil, nil, err
		}
		rsp, err := tpm2.Quote{
			SignHandle:     tpm2.AuthHandle{Handle: ak.handle, Name: tpm2.TPM2BName{Buffer: ak.name}, Auth: tpm2.PasswordAuth(nil)},
			QualifyingData: tpm2.TPM2BData{Buffer: nonce},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
			PCRSelect:      sel,
		}.Execute(t)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("quote: %w", err)
		}
		att, err := rsp.Quoted.Contents()
		if err != nil {
			return nil, nil, nil, fmt.Errorf("quote: %w", err)
		}
		info, err := att.Attested.Quote()
		if err != nil {
			return nil, nil, nil, fmt.Errorf("quote: %w", err)
		}
		h := sha256.New()
		for _, v := range values {
			h.Write(v)
		}
		if bytes.Equal(h.Sum(nil), info.PCRDigest.Buffer) {
			return rsp.Quoted.Bytes(), tpm2.Marshal(rsp.Signature), values, nil
		}
		// A PCR was extended between the read and the quote.
	}
	return nil, nil, nil, errors.New("quote: the PCRs keep changing")
}

// readPCRs reads the SHA-256 bank's PCRs pcrs (ascending).
func readPCRs(t transport.TPM, pcrs []int) ([][]byte, error) {
	var values [][]byte
	for start := 0; start < len(pcrs); start += maxPCRRead {
		batch := pcrs[start:min(start+maxPCRRead, len(pcrs))]
		rsp, err := tpm2.PCRRead{PCRSelectionIn: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{
			{Hash: tpm2.TPMAlgSHA256, PCRSelect: pcrBitmap(batch)},
		}}}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("read PCRs: %w", err)
		}
		if len(rsp.PCRValues.Digests) != len(batch) {
			return nil, fmt.Errorf("read PCRs: the TPM returned %d of %d SHA-256 PCRs (is the SHA-256 bank active?)", len(rsp.PCRValues.Digests), len(batch))
		}
		for _, d := range rsp.PCRValues.Digests {
			values = append(values, d.Buffer)
		}
	}
	return values, nil
}
