// Package tpmkey is the agent's KeyManager "tpm": private keys created in
// a TPM 2.0 that never leave it. A key is an ECC signing key, a child of
// the TPM's storage root key (the TCG ECC P-256 SRK template under the
// owner hierarchy, re-created from the TPM's seed when needed); what is
// stored in the key directory (one 0600 file per key ID, written
// atomically) is the key's public area and its private area as the TPM
// exported it, encrypted and integrity-protected under the SRK. Only the
// TPM that created a key can load it again: a copy of the directory on
// another device (or after the TPM was cleared) is useless, so a copied
// disk image cannot impersonate the device.
//
// Every signature is made by the TPM: each Sign opens the TPM, re-creates
// the SRK, loads the key, signs and flushes (a few milliseconds, see
// bench/RESULTS.md). The agent uses it for its own SVID key only, which is
// used at most once per TLS handshake with the server and once per
// renewal; workload keys, which rotate often, stay in memory and the
// agent's data directory.
package tpmkey

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/sigil-spiffe/sigil/internal/keys"
	"github.com/sigil-spiffe/sigil/internal/tpmdev"
)

// Name is the KeyManager plugin name.
const Name = "tpm"

// ErrOtherTPM is wrapped by GetKey when the stored key cannot be loaded by
// this TPM: it was created by another TPM (a copied data directory), or
// this TPM's owner hierarchy was cleared since. It wraps
// keys.ErrOtherDevice.
var ErrOtherTPM = fmt.Errorf("the key was not created by this TPM: %w", keys.ErrOtherDevice)

// signTimeout bounds one signature (crypto.Signer has no context).
const signTimeout = 30 * time.Second

// maxFileSize bounds a key file.
const maxFileSize = 8 << 10

// Config configures a Manager.
type Config struct {
	// TPMPath is the TPM device or socket (tpm_path); "" is /dev/tpmrm0.
	TPMPath string
	// Directory holds the wrapped keys (directory); created 0700.
	Directory string
}

// Manager keeps keys in a TPM. It implements keys.Manager and DeleteKey.
type Manager struct {
	dev *tpmdev.Device
	dir string

	mu    sync.Mutex
	cache map[string]*Key
}

var _ keys.Manager = (*Manager)(nil)

// New returns a manager storing wrapped keys under cfg.Directory (created
// 0700, tightened to 0700). It does not open the TPM.
func New(cfg Config) (*Manager, error) {
	if cfg.Directory == "" {
		return nil, errors.New("tpm key manager: directory is required")
	}
	if err := keys.CheckDir(cfg.Directory); err != nil {
		return nil, fmt.Errorf("tpm key manager: %w", err)
	}
	if err := os.MkdirAll(cfg.Directory, 0o700); err != nil {
		return nil, fmt.Errorf("tpm key manager: %w", err)
	}
	if err := os.Chmod(cfg.Directory, 0o700); err != nil {
		return nil, fmt.Errorf("tpm key manager: %w", err)
	}
	return &Manager{dev: tpmdev.New(cfg.TPMPath), dir: cfg.Directory, cache: map[string]*Key{}}, nil
}

// Dir returns the key directory.
func (m *Manager) Dir() string { return m.dir }

// keyFile is a stored key.
type keyFile struct {
	Type    keys.Type `json:"type"`
	Public  []byte    `json:"public"`  // TPMT_PUBLIC (TPM2B_PUBLIC contents)
	Private []byte    `json:"private"` // TPM2B_PRIVATE contents, wrapped by the SRK
}

// GenerateKey creates an ECC key (ec-p256 or ec-p384) in the TPM under id
// and stores it wrapped, replacing any previous key with that ID.
func (m *Manager) GenerateKey(ctx context.Context, id string, t keys.Type) (crypto.Signer, error) {
	name, err := fileName(id)
	if err != nil {
		return nil, err
	}
	curve := tpm2.TPMECCNistP256
	switch t {
	case keys.ECP256, "":
		t = keys.ECP256
	case keys.ECP384:
		curve = tpm2.TPMECCNistP384
	default:
		return nil, fmt.Errorf("tpm key manager: key type %q is not supported (ec-p256, ec-p384)", t)
	}
	var kf keyFile
	err = m.dev.Do(ctx, func(tpm transport.TPM) error {
		srk, err := createSRK(tpm)
		if err != nil {
			return err
		}
		defer tpmdev.Flush(tpm, srk.ObjectHandle)
		rsp, err := tpm2.Create{
			ParentHandle: tpm2.AuthHandle{Handle: srk.ObjectHandle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)},
			InPublic:     tpm2.New2B(signingTemplate(curve)),
		}.Execute(tpm)
		if err != nil {
			return fmt.Errorf("create key: %w", err)
		}
		kf = keyFile{Type: t, Public: rsp.OutPublic.Bytes(), Private: rsp.OutPrivate.Buffer}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("tpm key manager: generate key %q: %w", id, err)
	}
	k, err := m.newKey(id, &kf)
	if err != nil {
		return nil, err
	}
	data, err := json.Marshal(kf)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := keys.WriteFileAtomic(m.dir, name, data); err != nil {
		return nil, fmt.Errorf("tpm key manager: store key %q: %w", id, err)
	}
	m.cache[id] = k
	return k, nil
}

// GetKey returns the key stored under id, after checking that this TPM
// can load it (an error wrapping ErrOtherTPM if not), or an error wrapping
// keys.ErrNotFound.
func (m *Manager) GetKey(ctx context.Context, id string) (crypto.Signer, error) {
	name, err := fileName(id)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	k, ok := m.cache[id]
	m.mu.Unlock()
	if ok {
		return k, nil
	}
	path := filepath.Join(m.dir, name)
	data, err := readFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("key %q: %w", id, keys.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("tpm key manager: read key %q: %w", id, err)
	}
	var kf keyFile
	if err := json.Unmarshal(data, &kf); err != nil {
		return nil, fmt.Errorf("tpm key manager: key %q in %s: %w", id, path, err)
	}
	k, err = m.newKey(id, &kf)
	if err != nil {
		return nil, fmt.Errorf("tpm key manager: key %q in %s: %w", id, path, err)
	}
	if err := m.dev.Do(ctx, func(tpm transport.TPM) error {
		h, _, err := k.load(tpm)
		if err != nil {
			return err
		}
		tpmdev.Flush(tpm, h)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("tpm key manager: key %q in %s: %w", id, path, err)
	}
	m.mu.Lock()
	m.cache[id] = k
	m.mu.Unlock()
	return k, nil
}

// DeleteKey removes the key stored under id; an unknown ID is not an
// error. (The TPM holds nothing: deleting the file destroys the key.)
func (m *Manager) DeleteKey(_ context.Context, id string) error {
	name, err := fileName(id)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.cache, id)
	if err := keys.RemoveFile(m.dir, name); err != nil {
		return fmt.Errorf("tpm key manager: delete key %q: %w", id, err)
	}
	return nil
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("larger than %d bytes", maxFileSize)
	}
	return data, nil
}

// newKey checks a stored key's public area and returns its signer.
func (m *Manager) newKey(id string, kf *keyFile) (*Key, error) {
	if len(kf.Private) == 0 || len(kf.Public) == 0 {
		return nil, errors.New("not a TPM key file")
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](kf.Public)
	if err != nil {
		return nil, fmt.Errorf("public area: %w", err)
	}
	if pub.Type != tpm2.TPMAlgECC || !pub.ObjectAttributes.SignEncrypt || !pub.ObjectAttributes.FixedTPM || pub.ObjectAttributes.Restricted {
		return nil, errors.New("not an ECC signing key fixed to its TPM")
	}
	parms, err := pub.Parameters.ECCDetail()
	if err != nil {
		return nil, err
	}
	pt, err := pub.Unique.ECC()
	if err != nil {
		return nil, err
	}
	ek, err := tpm2.ECDSAPub(parms, pt)
	if err != nil {
		return nil, err
	}
	if _, err := ek.ECDH(); err != nil {
		return nil, errors.New("public key is not on its curve")
	}
	hash := crypto.SHA256
	if parms.CurveID == tpm2.TPMECCNistP384 {
		hash = crypto.SHA384
	}
	return &Key{dev: m.dev, id: id, pub: ek, public: kf.Public, private: kf.Private, hash: hash}, nil
}

// Key is a TPM-held ECDSA key; Sign runs in the TPM.
type Key struct {
	dev     *tpmdev.Device
	id      string
	pub     *ecdsa.PublicKey
	public  []byte
	private []byte
	hash    crypto.Hash
}

// Public returns the key's public key.
func (k *Key) Public() crypto.PublicKey { return k.pub }

// Sign signs digest (of SHA-256, SHA-384 or SHA-512 as opts says) in the
// TPM and returns an ASN.1 ECDSA signature, as ecdsa.PrivateKey.Sign does.
func (k *Key) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	var alg tpm2.TPMIAlgHash
	switch h := opts.HashFunc(); h {
	case crypto.SHA256:
		alg = tpm2.TPMAlgSHA256
	case crypto.SHA384:
		alg = tpm2.TPMAlgSHA384
	case crypto.SHA512:
		alg = tpm2.TPMAlgSHA512
	default:
		return nil, fmt.Errorf("tpm key %q: unsupported hash %v", k.id, h)
	}
	if len(digest) != opts.HashFunc().Size() {
		return nil, fmt.Errorf("tpm key %q: digest of %d bytes for %v", k.id, len(digest), opts.HashFunc())
	}
	ctx, cancel := context.WithTimeout(context.Background(), signTimeout)
	defer cancel()
	var sig []byte
	err := k.dev.Do(ctx, func(tpm transport.TPM) error {
		h, name, err := k.load(tpm)
		if err != nil {
			return err
		}
		defer tpmdev.Flush(tpm, h)
		rsp, err := tpm2.Sign{
			KeyHandle: tpm2.AuthHandle{Handle: h, Name: name, Auth: tpm2.PasswordAuth(nil)},
			Digest:    tpm2.TPM2BDigest{Buffer: digest},
			InScheme: tpm2.TPMTSigScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: alg}),
			},
			Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
		}.Execute(tpm)
		if err != nil {
			return fmt.Errorf("sign: %w", err)
		}
		e, err := rsp.Signature.Signature.ECDSA()
		if err != nil {
			return fmt.Errorf("sign: %w", err)
		}
		sig, err = asn1.Marshal(struct{ R, S *big.Int }{
			new(big.Int).SetBytes(e.SignatureR.Buffer), new(big.Int).SetBytes(e.SignatureS.Buffer),
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("tpm key %q: %w", k.id, err)
	}
	return sig, nil
}

// load re-creates the SRK, loads the key under it and flushes the SRK.
func (k *Key) load(tpm transport.TPM) (tpm2.TPMHandle, tpm2.TPM2BName, error) {
	srk, err := createSRK(tpm)
	if err != nil {
		return 0, tpm2.TPM2BName{}, err
	}
	defer tpmdev.Flush(tpm, srk.ObjectHandle)
	rsp, err := tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: srk.ObjectHandle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)},
		InPrivate:    tpm2.TPM2BPrivate{Buffer: k.private},
		InPublic:     tpm2.BytesAs2B[tpm2.TPMTPublic](k.public),
	}.Execute(tpm)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCIntegrity) {
			return 0, tpm2.TPM2BName{}, fmt.Errorf("%w (a copy from another device, or this TPM was cleared)", ErrOtherTPM)
		}
		return 0, tpm2.TPM2BName{}, fmt.Errorf("load key: %w", err)
	}
	return rsp.ObjectHandle, rsp.Name, nil
}

// createSRK creates the TCG ECC P-256 storage root key of the owner
// hierarchy (the same key every time: a function of the owner seed).
func createSRK(tpm transport.TPM) (*tpm2.CreatePrimaryResponse, error) {
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
	}.Execute(tpm)
	if err != nil {
		return nil, fmt.Errorf("create the storage root key: %w", err)
	}
	return rsp, nil
}

// signingTemplate is a non-restricted ECC signing key (any hash) on curve,
// generated in and fixed to the TPM.
func signingTemplate(curve tpm2.TPMECCCurve) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			NoDA:                true,
			SignEncrypt:         true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Scheme:  tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
			CurveID: curve,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	}
}

// fileName maps a key ID to a file name: letters, digits and '-' are kept,
// every other byte becomes "_hh".
func fileName(id string) (string, error) {
	if id == "" {
		return "", errors.New("empty key ID")
	}
	if len(id) > 200 {
		return "", fmt.Errorf("key ID too long (%d bytes)", len(id))
	}
	var b strings.Builder
	for i := 0; i < len(id); i++ {
		c := id[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "_%02x", c)
		}
	}
	b.WriteString(".tpmkey")
	return b.String(), nil
}
