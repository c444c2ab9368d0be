package tpm

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// ServerConfig is the server's NodeAttestor "tpm" configuration. At least
// one of EKCAPath, EKHashPath and EKHashes must be set.
type ServerConfig struct {
	// EKCAPath (ek_ca_path) is a directory of manufacturer CA
	// certificates (PEM, one or more per file, or DER); an EK certificate
	// chaining to one of them is trusted. Read again when the directory
	// changes (a file added, removed or renamed into place).
	EKCAPath string
	// EKHashPath (ek_hash_path) is a directory whose file names are
	// allowed EK public key hashes (as the community plugin's hash_path:
	// `touch <dir>/<hash>`); looked up at every attestation.
	EKHashPath string
	// EKHashes (ek_hashes) are allowed EK public key hashes.
	EKHashes []string
	// PCRSelection (pcr_selection) lists the PCRs of the SHA-256 bank the
	// agent must quote; each becomes a tpm:pcr:sha256:<i>:<hex> selector.
	PCRSelection []int
	// PCRAllowed (pcr_allowed) restricts PCR values: entries
	// "sha256:<index>:<hex>"; a PCR with entries here must have one of
	// their values, else the attestation is refused. Every index must be
	// in PCRSelection.
	PCRAllowed []string
}

// maxCAFiles and maxCAFileSize bound what is read from ek_ca_path.
const (
	maxCAFiles    = 1000
	maxCAFileSize = 1 << 20
)

// Validate checks the configuration without touching the file system.
func (c *ServerConfig) Validate() error {
	var errs []error
	if c.EKCAPath == "" && c.EKHashPath == "" && len(c.EKHashes) == 0 {
		errs = append(errs, errors.New("one of ek_ca_path, ek_hash_path or ek_hashes must be configured"))
	}
	for _, h := range c.EKHashes {
		if err := checkHash(h); err != nil {
			errs = append(errs, fmt.Errorf("ek_hashes: %q: %w", clipStr(h), err))
		}
	}
	seen := map[int]bool{}
	for _, i := range c.PCRSelection {
		if i < 0 || i > MaxPCR {
			errs = append(errs, fmt.Errorf("pcr_selection: PCR %d: a PCR index is 0 to %d", i, MaxPCR))
			continue
		}
		if seen[i] {
			errs = append(errs, fmt.Errorf("pcr_selection: PCR %d is listed twice", i))
		}
		seen[i] = true
	}
	for _, a := range c.PCRAllowed {
		i, _, err := parsePCRValue(a)
		if err != nil {
			errs = append(errs, fmt.Errorf("pcr_allowed: %q: %w", clipStr(a), err))
			continue
		}
		if !seen[i] {
			errs = append(errs, fmt.Errorf("pcr_allowed: PCR %d is not in pcr_selection", i))
		}
	}
	return errors.Join(errs...)
}

func clipStr(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// Server is the server half of the tpm node attestor.
type Server struct {
	td      spiffeid.TrustDomain
	caPath  string
	hashDir string
	hashes  map[string]bool
	pcrs    []int
	allowed map[int]map[string]bool

	caMu    sync.Mutex
	caPool  *x509.CertPool
	caMTime time.Time
}

// NewServer returns the server half for trust domain td. It loads the CA
// directory (which must hold at least one certificate) and checks that the
// hash directory exists.
func NewServer(td spiffeid.TrustDomain, cfg ServerConfig) (*Server, error) {
	if td.IsZero() {
		return nil, errors.New("tpm: trust domain is required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("NodeAttestor %q: %w", Type, err)
	}
	s := &Server{td: td, caPath: cfg.EKCAPath, hashDir: cfg.EKHashPath, hashes: map[string]bool{}, allowed: map[int]map[string]bool{}}
	for _, h := range cfg.EKHashes {
		s.hashes[h] = true
	}
	s.pcrs = slices.Clone(cfg.PCRSelection)
	sort.Ints(s.pcrs)
	for _, a := range cfg.PCRAllowed {
		i, v, _ := parsePCRValue(a)
		if s.allowed[i] == nil {
			s.allowed[i] = map[string]bool{}
		}
		s.allowed[i][v] = true
	}
	if s.hashDir != "" {
		if err := checkHashDir(s.hashDir); err != nil {
			return nil, fmt.Errorf("NodeAttestor %q: %w", Type, err)
		}
	}
	if s.caPath != "" {
		if _, err := s.roots(); err != nil {
			return nil, fmt.Errorf("NodeAttestor %q: %w", Type, err)
		}
	}
	return s, nil
}

// checkDirs makes NewServer's checks of the directories the configuration
// names, for ParseServerConfig: ek_ca_path must be a directory holding at
// least one certificate, ek_hash_path a directory.
func (c *ServerConfig) checkDirs() (caErr, hashErr error) {
	if c.EKCAPath != "" {
		_, caErr = (&Server{caPath: c.EKCAPath}).roots()
	}
	if c.EKHashPath != "" {
		hashErr = checkHashDir(c.EKHashPath)
	}
	return caErr, hashErr
}

// checkHashDir checks that ek_hash_path is a directory.
func checkHashDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("ek_hash_path: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("ek_hash_path %s is not a directory", dir)
	}
	return nil
}

// Type returns the attestation type.
func (s *Server) Type() string { return Type }

// roots returns the CA pool, reading ek_ca_path again when the directory
// changed since it was last read.
func (s *Server) roots() (*x509.CertPool, error) {
	fi, err := os.Stat(s.caPath)
	if err != nil {
		return nil, fmt.Errorf("ek_ca_path: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("ek_ca_path %s is not a directory", s.caPath)
	}
	s.caMu.Lock()
	defer s.caMu.Unlock()
	if s.caPool != nil && fi.ModTime().Equal(s.caMTime) {
		return s.caPool, nil
	}
	pool, err := LoadCADir(s.caPath)
	if err != nil {
		return nil, err
	}
	s.caPool, s.caMTime = pool, fi.ModTime()
	return pool, nil
}

// LoadCADir reads every regular file of dir as PEM certificates (one or
// more) or one DER certificate. A file that is neither is an error, as is
// a directory without any certificate.
func LoadCADir(dir string) (*x509.CertPool, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("ek_ca_path: %w", err)
	}
	if len(des) > maxCAFiles {
		return nil, fmt.Errorf("ek_ca_path %s holds more than %d files", dir, maxCAFiles)
	}
	pool := x509.NewCertPool()
	n := 0
	for _, de := range des {
		if !de.Type().IsRegular() && de.Type()&fs.ModeSymlink == 0 {
			continue
		}
		path := filepath.Join(dir, de.Name())
		fi, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("ek_ca_path: %w", err)
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		if fi.Size() > maxCAFileSize {
			return nil, fmt.Errorf("ek_ca_path: %s is larger than %d bytes", path, maxCAFileSize)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("ek_ca_path: %w", err)
		}
		certs, err := parseCerts(data)
		if err != nil {
			return nil, fmt.Errorf("ek_ca_path: %s: %w", path, err)
		}
		for _, c := range certs {
			pool.AddCert(c)
			n++
		}
	}
	if n == 0 {
		return nil, fmt.Errorf("ek_ca_path %s holds no certificate", dir)
	}
	return pool, nil
}

func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) > 0 {
		return certs, nil
	}
	c, err := x509.ParseCertificate(data)
	if err != nil {
		return nil, errors.New("neither PEM certificates nor a DER certificate")
	}
	return []*x509.Certificate{c}, nil
}

// oidSAN is the subject alternative name extension. EK certificates carry
// it critical with only a directory name (TPM manufacturer, model,
// version), which Go's verifier does not handle.
var oidSAN = asn1.ObjectIdentifier{2, 5, 29, 17}

// ekVerified is what checkEK establishes.
type ekVerified struct {
	pub     *tpm2.TPMTPublic
	pubHash string
}

// Attest verifies the agent's EK and binds its AK by credential
// activation, then, with a PCR selection, verifies its quote.
func (s *Server) Attest(ctx context.Context, payload []byte, challengeFn node.ChallengeFunc) (*node.Result, error) {
	var data attestationData
	if err := decodeJSON(payload, "tpm attestation data", &data); err != nil {
		return nil, fmt.Errorf("%w: %w", node.ErrInvalid, err)
	}
	ek, err := s.checkEK(&data)
	if err != nil {
		return nil, err
	}
	if len(data.AKPublic) == 0 || len(data.AKPublic) > maxPublicSize {
		return nil, fmt.Errorf("%w: ak_public missing or larger than %d bytes", node.ErrInvalid, maxPublicSize)
	}
	akPub, err := decodeTPM[tpm2.TPMTPublic](data.AKPublic, "ak_public")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", node.ErrInvalid, err)
	}
	if err := checkAKPublic(akPub); err != nil {
		return nil, fmt.Errorf("%w: %w", node.ErrInvalid, err)
	}
	akKey, err := publicKey(akPub)
	if err != nil {
		return nil, fmt.Errorf("%w: ak_public: %w", node.ErrInvalid, err)
	}
	akName, err := tpm2.ObjectName(akPub)
	if err != nil {
		return nil, fmt.Errorf("%w: ak_public: %w", node.ErrInvalid, err)
	}

	// MakeCredential in software: only the TPM holding the EK's private
	// key, with the AK loaded, recovers the secret.
	encKey, err := tpm2.ImportEncapsulationKey(ek.pub)
	if err != nil {
		return nil, fmt.Errorf("%w: ek_public: %w", node.ErrInvalid, err)
	}
	secret := make([]byte, secretSize)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("tpm: secret: %w", err)
	}
	blob, encSecret, err := tpm2.CreateCredential(rand.Reader, encKey, akName.Buffer, secret)
	if err != nil {
		return nil, fmt.Errorf("%w: make credential for the EK: %w", node.ErrInvalid, err)
	}
	ch := challenge{CredentialBlob: blob, EncryptedSecret: encSecret}
	if len(s.pcrs) > 0 {
		ch.Nonce = make([]byte, nonceSize)
		if _, err := rand.Read(ch.Nonce); err != nil {
			return nil, fmt.Errorf("tpm: nonce: %w", err)
		}
		ch.PCRs = s.pcrs
	}
	chBytes, err := json.Marshal(ch)
	if err != nil {
		return nil, fmt.Errorf("tpm: encode challenge: %w", err)
	}
	ans, err := challengeFn(ctx, chBytes)
	if err != nil {
		return nil, fmt.Errorf("tpm challenge: %w", err)
	}
	var rsp response
	if err := decodeJSON(ans, "tpm challenge response", &rsp); err != nil {
		return nil, fmt.Errorf("%w: %w", node.ErrInvalid, err)
	}
	if subtle.ConstantTimeCompare(rsp.Secret, secret) != 1 {
		return nil, fmt.Errorf("%w: the TPM did not recover the credential: the AK is not in the TPM of the EK", node.ErrRefused)
	}

	agentID, err := AgentID(s.td, ek.pubHash)
	if err != nil {
		return nil, fmt.Errorf("tpm: agent ID: %w", err)
	}
	sels := []selector.Selector{pubHashSelector(ek.pubHash)}
	if len(s.pcrs) > 0 {
		values, err := verifyQuote(&rsp, ch.Nonce, s.pcrs, akKey)
		if err != nil {
			return nil, err
		}
		for i, idx := range s.pcrs {
			v := hex.EncodeToString(values[i])
			if allowed := s.allowed[idx]; allowed != nil && !allowed[v] {
				return nil, fmt.Errorf("%w: PCR %d of the SHA-256 bank (%s) is not one of the values pcr_allowed lists for it", node.ErrRefused, idx, v)
			}
			sels = append(sels, pcrSelector(idx, values[i]))
		}
	}
	return &node.Result{AgentID: agentID, Selectors: sels, CanReattest: true}, nil
}

// checkEK decodes and checks the EK and decides whether it is trusted.
func (s *Server) checkEK(data *attestationData) (*ekVerified, error) {
	if len(data.EKPublic) == 0 || len(data.EKPublic) > maxPublicSize {
		return nil, fmt.Errorf("%w: ek_public missing or larger than %d bytes", node.ErrInvalid, maxPublicSize)
	}
	if len(data.EKCert) > maxCertSize {
		return nil, fmt.Errorf("%w: ek_cert larger than %d bytes", node.ErrInvalid, maxCertSize)
	}
	pub, err := decodeTPM[tpm2.TPMTPublic](data.EKPublic, "ek_public")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", node.ErrInvalid, err)
	}
	if err := checkEKPublic(pub); err != nil {
		return nil, fmt.Errorf("%w: %w", node.ErrInvalid, err)
	}
	key, err := publicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: ek_public: %w", node.ErrInvalid, err)
	}
	var cert *x509.Certificate
	if len(data.EKCert) > 0 {
		cert, err = x509.ParseCertificate(data.EKCert)
		if err != nil {
			return nil, fmt.Errorf("%w: ek_cert: %w", node.ErrInvalid, err)
		}
		if !samePublicKey(key, cert.PublicKey) {
			return nil, fmt.Errorf("%w: ek_cert is not the certificate of ek_public", node.ErrInvalid)
		}
	}
	hash, err := PubHash(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", node.ErrInvalid, err)
	}
	v := &ekVerified{pub: pub, pubHash: hash}
	if s.hashes[hash] {
		return v, nil
	}
	if s.hashDir != "" {
		fi, err := os.Stat(filepath.Join(s.hashDir, hash))
		switch {
		case err == nil && fi.Mode().IsRegular():
			return v, nil
		case err != nil && !errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("tpm: ek_hash_path: %w", err)
		}
	}
	if s.caPath == "" {
		return nil, fmt.Errorf("%w: EK %s is not in the allowed EK hashes", node.ErrRefused, hash)
	}
	if cert == nil {
		return nil, fmt.Errorf("%w: EK %s is not in the allowed EK hashes and the TPM sent no EK certificate", node.ErrRefused, hash)
	}
	roots, err := s.roots()
	if err != nil {
		return nil, fmt.Errorf("tpm: %w", err)
	}
	c := *cert
	c.UnhandledCriticalExtensions = slices.DeleteFunc(slices.Clone(c.UnhandledCriticalExtensions), func(o asn1.ObjectIdentifier) bool { return o.Equal(oidSAN) })
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("%w: EK %s: its certificate does not chain to a manufacturer CA in ek_ca_path: %w", node.ErrRefused, hash, err)
	}
	return v, nil
}

// verifyQuote checks the quote and returns the PCR values (in the order of
// pcrs): a TPM-generated quote by the AK, over nonce and exactly pcrs of
// the SHA-256 bank, whose digest is that of the returned values.
func verifyQuote(rsp *response, nonce []byte, pcrs []int, akKey crypto.PublicKey) ([][]byte, error) {
	switch {
	case len(rsp.Quote) == 0 || len(rsp.Quote) > maxBlobSize:
		return nil, fmt.Errorf("%w: quote missing or larger than %d bytes", node.ErrInvalid, maxBlobSize)
	case len(rsp.Signature) == 0 || len(rsp.Signature) > maxBlobSize:
		return nil, fmt.Errorf("%w: quote signature missing or larger than %d bytes", node.ErrInvalid, maxBlobSize)
	case len(rsp.PCRValues) != len(pcrs):
		return nil, fmt.Errorf("%w: %d PCR values for %d selected PCRs", node.ErrInvalid, len(rsp.PCRValues), len(pcrs))
	}
	for _, v := range rsp.PCRValues {
		if len(v) != sha256.Size {
			return nil, fmt.Errorf("%w: a SHA-256 PCR value is %d bytes", node.ErrInvalid, sha256.Size)
		}
	}
	sig, err := decodeTPM[tpm2.TPMTSignature](rsp.Signature, "quote signature")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", node.ErrInvalid, err)
	}
	// The signature first: nothing of the quote is trusted before.
	digest := sha256.Sum256(rsp.Quote)
	if err := verifySignature(akKey, sig, digest[:]); err != nil {
		return nil, fmt.Errorf("%w: quote: %w", node.ErrRefused, err)
	}
	att, err := decodeTPM[tpm2.TPMSAttest](rsp.Quote, "quote")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", node.ErrInvalid, err)
	}
	if att.Magic != tpm2.TPMGeneratedValue || att.Type != tpm2.TPMSTAttestQuote {
		return nil, fmt.Errorf("%w: the quote is not a TPM-generated quote", node.ErrRefused)
	}
	if subtle.ConstantTimeCompare(att.ExtraData.Buffer, nonce) != 1 {
		return nil, fmt.Errorf("%w: the quote is not over this attestation's nonce", node.ErrRefused)
	}
	q, err := att.Attested.Quote()
	if err != nil {
		return nil, fmt.Errorf("%w: quote: %w", node.ErrInvalid, err)
	}
	want := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: pcrBitmap(pcrs)}}}
	if !slices.EqualFunc(q.PCRSelect.PCRSelections, want.PCRSelections, func(a, b tpm2.TPMSPCRSelection) bool {
		return a.Hash == b.Hash && string(trimZeros(a.PCRSelect)) == string(trimZeros(b.PCRSelect))
	}) {
		return nil, fmt.Errorf("%w: the quote is not over the requested PCRs", node.ErrRefused)
	}
	h := sha256.New()
	for _, v := range rsp.PCRValues {
		h.Write(v)
	}
	if subtle.ConstantTimeCompare(h.Sum(nil), q.PCRDigest.Buffer) != 1 {
		return nil, fmt.Errorf("%w: the PCR values do not match the quoted digest", node.ErrRefused)
	}
	return rsp.PCRValues, nil
}

// pcrBitmap is the PC Client selection bitmap (3 bytes) of pcrs.
func pcrBitmap(pcrs []int) []byte {
	b := make([]byte, 3)
	for _, i := range pcrs {
		b[i/8] |= 1 << (i % 8)
	}
	return b
}

func trimZeros(b []byte) []byte {
	for len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	return b
}

// verifySignature checks a TPM signature by the AK over digest (SHA-256).
func verifySignature(akKey crypto.PublicKey, sig *tpm2.TPMTSignature, digest []byte) error {
	switch k := akKey.(type) {
	case *ecdsa.PublicKey:
		if sig.SigAlg != tpm2.TPMAlgECDSA {
			return errors.New("not an ECDSA signature")
		}
		e, err := sig.Signature.ECDSA()
		if err != nil || e.Hash != tpm2.TPMAlgSHA256 {
			return errors.New("not an ECDSA-SHA256 signature")
		}
		r, s := new(big.Int).SetBytes(e.SignatureR.Buffer), new(big.Int).SetBytes(e.SignatureS.Buffer)
		if !ecdsa.Verify(k, digest, r, s) {
			return errors.New("bad signature")
		}
		return nil
	case *rsa.PublicKey:
		if sig.SigAlg != tpm2.TPMAlgRSASSA {
			return errors.New("not an RSASSA signature")
		}
		r, err := sig.Signature.RSASSA()
		if err != nil || r.Hash != tpm2.TPMAlgSHA256 {
			return errors.New("not an RSASSA-SHA256 signature")
		}
		if err := rsa.VerifyPKCS1v15(k, crypto.SHA256, digest, r.Sig.Buffer); err != nil {
			return errors.New("bad signature")
		}
		return nil
	}
	return errors.New("unsupported AK")
}
