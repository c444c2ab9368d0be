package x509pop

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// Refusals, each wrapping node.ErrRefused: the attestation data was well
// formed but does not prove the device's identity.
var (
	// ErrCertificateExpired: the device certificate (or a CA certificate
	// of its chain) is expired or not yet valid.
	ErrCertificateExpired = fmt.Errorf("%w: certificate expired or not yet valid", node.ErrRefused)
	// ErrUntrusted: the device certificate does not chain to a CA of
	// ca_bundle_path(s) through the intermediates the agent sent.
	ErrUntrusted = fmt.Errorf("%w: certificate not trusted", node.ErrRefused)
	// ErrUnusableCertificate: the device certificate cannot prove
	// possession (no digitalSignature key usage, an unsupported key type,
	// an agent ID or selector it cannot yield).
	ErrUnusableCertificate = fmt.Errorf("%w: certificate unusable for x509pop", node.ErrRefused)
	// ErrBadSignature: the response is not a signature of this
	// attestation's challenge by the device certificate's key (another
	// key, or an answer to another challenge).
	ErrBadSignature = fmt.Errorf("%w: challenge response signature invalid", node.ErrRefused)
	// ErrReplayed: the response was already used in an earlier
	// attestation.
	ErrReplayed = fmt.Errorf("%w: challenge response replayed", node.ErrRefused)
)

// ServerConfig is the plugin_data of the server's NodeAttestor "x509pop",
// with SPIRE's keys.
type ServerConfig struct {
	// CABundlePath (ca_bundle_path) or CABundlePaths (ca_bundle_paths),
	// exactly one: PEM files of the CA certificates device certificates
	// must chain to.
	CABundlePath  string
	CABundlePaths []string
	// AgentPathTemplate (agent_path_template) shapes the agent ID's path
	// after /spire/agent; "" is "/x509pop/{{ .Fingerprint }}".
	AgentPathTemplate string
	// MaxIntermediates (max_intermediates) bounds the intermediates an
	// agent may send; 0 is DefaultMaxIntermediates.
	MaxIntermediates int
	// MaxRSAKeySize (max_rsa_key_size) bounds RSA keys in the chain, in
	// bits; 0 is DefaultMaxRSAKeySize.
	MaxRSAKeySize int
}

// Validate checks the configuration without reading any file.
func (c ServerConfig) Validate() error {
	var errs []error
	switch {
	case c.CABundlePath != "" && len(c.CABundlePaths) > 0:
		errs = append(errs, errors.New("set only one of ca_bundle_path and ca_bundle_paths"))
	case c.CABundlePath == "" && len(c.CABundlePaths) == 0:
		errs = append(errs, errors.New("one of ca_bundle_path or ca_bundle_paths is required"))
	}
	for _, p := range c.CABundlePaths {
		if p == "" {
			errs = append(errs, errors.New("ca_bundle_paths has an empty path"))
		}
	}
	if c.MaxIntermediates < 0 {
		errs = append(errs, errors.New("max_intermediates must be greater than 0"))
	}
	if c.MaxRSAKeySize < 0 {
		errs = append(errs, errors.New("max_rsa_key_size must be greater than 0"))
	}
	return errors.Join(errs...)
}

// bundlePaths returns the configured CA bundle files.
func (c ServerConfig) bundlePaths() []string {
	if c.CABundlePath != "" {
		return []string{c.CABundlePath}
	}
	return c.CABundlePaths
}

// PathTemplate renders the path of an agent ID from TemplateData; it is
// what agentpath.Parse returns.
type PathTemplate interface {
	Execute(data any) (string, error)
}

// ServerOptions are what the server half needs besides its plugin_data.
type ServerOptions struct {
	TrustDomain spiffeid.TrustDomain
	// ParseTemplate parses agent_path_template (agentpath.Parse, which
	// only the server binary links). Required when the template is set.
	ParseTemplate func(text string) (PathTemplate, error)
	Clock         clock.Clock // nil = the real clock
}

// TemplateData is what agent_path_template can use: every field of the
// device's (leaf) certificate, e.g. .Subject.CommonName, and these.
type TemplateData struct {
	*x509.Certificate
	PluginName      string // "x509pop"
	Fingerprint     string // SHA-1 of the leaf, lowercase hex
	SerialNumberHex string
	TrustDomain     string
	// SVIDPathTrimmed is always "" (SPIRE's mode "spiffe" is not
	// supported).
	SVIDPathTrimmed string
	// URISanSelectors maps <key> to <value> for the leaf's URI SANs
	// x509pop://<trust domain>/<key>/<value>.
	URISanSelectors map[string]string
}

// Server is the server half: it verifies device certificates and their
// proof of possession.
type Server struct {
	td               spiffeid.TrustDomain
	roots            *x509.CertPool
	rootCerts        []*x509.Certificate
	tmpl             PathTemplate // nil: the default path
	maxIntermediates int
	maxRSAKeySize    int
	clk              clock.Clock
	used             *nonceSet
}

// NewServer loads the CA bundles and returns the server half.
func NewServer(cfg ServerConfig, opts ServerOptions) (*Server, error) {
	if opts.TrustDomain.IsZero() {
		return nil, errors.New("x509pop: trust domain is required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("x509pop: %w", err)
	}
	s := &Server{
		td:               opts.TrustDomain,
		roots:            x509.NewCertPool(),
		maxIntermediates: cfg.MaxIntermediates,
		maxRSAKeySize:    cfg.MaxRSAKeySize,
		clk:              clock.OrReal(opts.Clock),
		used:             newNonceSet(usedNonces),
	}
	if s.maxIntermediates == 0 {
		s.maxIntermediates = DefaultMaxIntermediates
	}
	if s.maxRSAKeySize == 0 {
		s.maxRSAKeySize = DefaultMaxRSAKeySize
	}
	for _, p := range cfg.bundlePaths() {
		certs, err := LoadCertificates(p)
		if err != nil {
			return nil, fmt.Errorf("x509pop: CA bundle: %w", err)
		}
		for _, c := range certs {
			s.roots.AddCert(c)
			s.rootCerts = append(s.rootCerts, c)
		}
	}
	if cfg.AgentPathTemplate != "" {
		if opts.ParseTemplate == nil {
			return nil, errors.New("x509pop: agent_path_template is set but no template engine was given")
		}
		t, err := opts.ParseTemplate(cfg.AgentPathTemplate)
		if err != nil {
			return nil, fmt.Errorf("x509pop: %w", err)
		}
		s.tmpl = t
	}
	return s, nil
}

// maxCertFileSize bounds a PEM file of certificates read from disk.
const maxCertFileSize = 4 << 20

// LoadCertificates reads the CERTIFICATE blocks of a PEM file (other
// blocks are skipped, as SPIRE does); it fails if there is none.
func LoadCertificates(path string) ([]*x509.Certificate, error) {
	data, err := readFile(path, maxCertFileSize)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for i := 0; ; i++ {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: PEM block %d: %w", path, i+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s: no PEM CERTIFICATE block", path)
	}
	return certs, nil
}

// readFile reads a file of at most limit bytes.
func readFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var b bytes.Buffer
	n, err := b.ReadFrom(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if n > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return b.Bytes(), nil
}

// Attest verifies the device certificate chain in payload, challenges the
// agent to prove possession of the certificate's key and returns the
// agent ID and selectors. Errors wrap node.ErrInvalid (malformed data) or
// node.ErrRefused (see the Err* refusals); other errors come from the
// challenge (the agent went away) or the system's random source.
func (s *Server) Attest(ctx context.Context, payload []byte, challengeFn node.ChallengeFunc) (*node.Result, error) {
	leaf, intermediates, err := s.parsePayload(payload)
	if err != nil {
		return nil, err
	}
	chains, err := s.verify(leaf, intermediates)
	if err != nil {
		return nil, err
	}

	nonce := make([]byte, NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("x509pop: generate nonce: %w", err)
	}
	var ch challenge
	switch leaf.PublicKey.(type) {
	case *ecdsa.PublicKey:
		ch.ECDSASignature = &nonceChallenge{Nonce: nonce}
	case *rsa.PublicKey:
		ch.RSASignature = &nonceChallenge{Nonce: nonce}
	}
	chBytes, err := json.Marshal(ch)
	if err != nil {
		return nil, fmt.Errorf("x509pop: encode challenge: %w", err)
	}
	respBytes, err := challengeFn(ctx, chBytes)
	if err != nil {
		return nil, fmt.Errorf("x509pop challenge: %w", err)
	}
	if err := s.checkResponse(leaf, nonce, respBytes); err != nil {
		return nil, err
	}
	return s.result(leaf, chains)
}

func (s *Server) parsePayload(payload []byte) (*x509.Certificate, []*x509.Certificate, error) {
	if len(payload) == 0 {
		return nil, nil, fmt.Errorf("%w: x509pop attestation data is empty", node.ErrInvalid)
	}
	if len(payload) > MaxPayloadSize {
		return nil, nil, fmt.Errorf("%w: x509pop attestation data is %d bytes, more than %d", node.ErrInvalid, len(payload), MaxPayloadSize)
	}
	var data attestationData
	if err := json.Unmarshal(payload, &data); err != nil {
		return nil, nil, fmt.Errorf("%w: x509pop attestation data is not JSON {\"certificates\": [...]}: %s", node.ErrInvalid, clip.Cut(err.Error(), 100))
	}
	switch n := len(data.Certificates); {
	case n == 0:
		return nil, nil, fmt.Errorf("%w: x509pop attestation data has no certificate", node.ErrInvalid)
	case n-1 > s.maxIntermediates:
		return nil, nil, fmt.Errorf("%w: x509pop attestation data has %d intermediate certificates, more than max_intermediates (%d)", node.ErrInvalid, n-1, s.maxIntermediates)
	}
	certs := make([]*x509.Certificate, len(data.Certificates))
	for i, der := range data.Certificates {
		what := "the device certificate"
		if i > 0 {
			what = fmt.Sprintf("intermediate certificate %d", i)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: x509pop: %s does not parse: %s", node.ErrInvalid, what, clip.Cut(err.Error(), 100))
		}
		if k, ok := c.PublicKey.(*rsa.PublicKey); ok && k.N.BitLen() > s.maxRSAKeySize {
			return nil, nil, fmt.Errorf("%w: x509pop: %s has a %d-bit RSA key, more than max_rsa_key_size (%d)", node.ErrInvalid, what, k.N.BitLen(), s.maxRSAKeySize)
		}
		certs[i] = c
	}
	return certs[0], certs[1:], nil
}

// verify checks that the device certificate can prove possession and
// chains to a configured CA, and returns the verified chains.
func (s *Server) verify(leaf *x509.Certificate, intermediates []*x509.Certificate) ([][]*x509.Certificate, error) {
	now := s.clk.Now()
	if err := checkValidity(leaf, "the device certificate", now); err != nil {
		return nil, err
	}
	if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return nil, fmt.Errorf("%w: the device certificate %s has no digitalSignature key usage", ErrUnusableCertificate, describe(leaf))
	}
	switch leaf.PublicKey.(type) {
	case *ecdsa.PublicKey, *rsa.PublicKey:
	default:
		return nil, fmt.Errorf("%w: the device certificate %s has a %s key; x509pop proves ECDSA and RSA keys", ErrUnusableCertificate, describe(leaf), leaf.PublicKeyAlgorithm)
	}
	pool := x509.NewCertPool()
	for _, c := range intermediates {
		pool.AddCert(c)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{
		Roots:         s.roots,
		Intermediates: pool,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, s.chainError(leaf, intermediates, now, err)
	}
	return chains, nil
}

// chainError turns a failed verification into a precise refusal.
func (s *Server) chainError(leaf *x509.Certificate, intermediates []*x509.Certificate, now time.Time, err error) error {
	// An expired CA certificate on the way is the likeliest reason a
	// chain that names its issuers correctly fails.
	for _, c := range intermediates {
		if e := checkValidity(c, "intermediate certificate", now); e != nil && issues(c, leaf, intermediates) {
			return e
		}
	}
	for _, c := range s.rootCerts {
		if e := checkValidity(c, "CA certificate of the bundle", now); e != nil && issues(c, leaf, intermediates) {
			return e
		}
	}
	var uae x509.UnknownAuthorityError
	if errors.As(err, &uae) {
		return s.untrusted(leaf, intermediates)
	}
	var cie x509.CertificateInvalidError
	if errors.As(err, &cie) && cie.Reason == x509.Expired {
		return fmt.Errorf("%w: a certificate of the chain is expired or not yet valid", ErrCertificateExpired)
	}
	return fmt.Errorf("%w: the device certificate %s does not verify: %s", ErrUntrusted, describe(leaf), clip.Cut(err.Error(), 100))
}

// untrusted explains why no chain reaches a configured CA: it follows the
// leaf's issuer names through the intermediates the agent sent.
func (s *Server) untrusted(leaf *x509.Certificate, intermediates []*x509.Certificate) error {
	cur := leaf
	seen := map[*x509.Certificate]bool{}
	for range len(intermediates) + 1 {
		for _, r := range s.rootCerts {
			if bytes.Equal(r.RawSubject, cur.RawIssuer) {
				return fmt.Errorf("%w: %s names CA %s of the bundle as its issuer but is not signed by its key (a certificate from another CA of the same name)",
					ErrUntrusted, describe(cur), quoteName(r))
			}
		}
		var next *x509.Certificate
		for _, c := range intermediates {
			if !seen[c] && c != cur && bytes.Equal(c.RawSubject, cur.RawIssuer) && cur.CheckSignatureFrom(c) == nil {
				next = c
				break
			}
		}
		if next == nil {
			break
		}
		seen[next] = true
		cur = next
	}
	issuer := clip.Quote(cur.Issuer.String())
	if cur == leaf {
		if len(intermediates) == 0 {
			return fmt.Errorf("%w: the device certificate's issuer %s is not a CA of the bundle and the agent sent no intermediate certificates (wrong CA, or intermediates_path not set)",
				ErrUntrusted, issuer)
		}
		return fmt.Errorf("%w: the device certificate's issuer %s is neither a CA of the bundle nor among the %d intermediate certificates the agent sent (wrong CA, or intermediates missing)",
			ErrUntrusted, issuer, len(intermediates))
	}
	return fmt.Errorf("%w: the chain the agent sent ends at %s, whose issuer %s is not a CA of the bundle (wrong CA)",
		ErrUntrusted, describe(cur), issuer)
}

// issues reports whether c is on the path of issuers from leaf (by name).
func issues(c, leaf *x509.Certificate, intermediates []*x509.Certificate) bool {
	cur := leaf
	for range len(intermediates) + 1 {
		if bytes.Equal(c.RawSubject, cur.RawIssuer) {
			return true
		}
		var next *x509.Certificate
		for _, i := range intermediates {
			if i != cur && bytes.Equal(i.RawSubject, cur.RawIssuer) {
				next = i
				break
			}
		}
		if next == nil {
			return false
		}
		cur = next
	}
	return false
}

func checkValidity(c *x509.Certificate, what string, now time.Time) error {
	switch {
	case now.After(c.NotAfter):
		return fmt.Errorf("%w: %s %s expired at %s", ErrCertificateExpired, what, describe(c), c.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(c.NotBefore):
		return fmt.Errorf("%w: %s %s is not valid before %s", ErrCertificateExpired, what, describe(c), c.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// describe names a certificate in a message: its subject (cut) and serial.
func describe(c *x509.Certificate) string {
	return fmt.Sprintf("%s (serial %s)", quoteName(c), clip.Cut(SerialNumberHex(c.SerialNumber), 40))
}

func quoteName(c *x509.Certificate) string {
	if c.Subject.CommonName != "" {
		return clip.Quote(c.Subject.CommonName)
	}
	return clip.Quote(c.Subject.String())
}

// checkResponse verifies the agent's answer to the challenge nonce.
func (s *Server) checkResponse(leaf *x509.Certificate, serverNonce, respBytes []byte) error {
	if len(respBytes) > MaxMessageSize {
		return fmt.Errorf("%w: x509pop challenge response is %d bytes, more than %d", node.ErrInvalid, len(respBytes), MaxMessageSize)
	}
	var resp response
	if err := json.Unmarshal(respBytes, &resp); err != nil {
		return fmt.Errorf("%w: x509pop challenge response is not JSON: %s", node.ErrInvalid, clip.Cut(err.Error(), 100))
	}
	var agentNonce []byte
	var verify func(digest []byte) bool
	switch pub := leaf.PublicKey.(type) {
	case *ecdsa.PublicKey:
		r := resp.ECDSASignature
		if r == nil {
			return fmt.Errorf("%w: x509pop challenge response has no ecdsa_signature (the device certificate has an ECDSA key)", node.ErrInvalid)
		}
		agentNonce = r.Nonce
		verify = func(digest []byte) bool {
			return len(r.R) > 0 && len(r.S) > 0 && len(r.R) <= 66 && len(r.S) <= 66 &&
				ecdsa.Verify(pub, digest, new(big.Int).SetBytes(r.R), new(big.Int).SetBytes(r.S))
		}
	case *rsa.PublicKey:
		r := resp.RSASignature
		if r == nil {
			return fmt.Errorf("%w: x509pop challenge response has no rsa_signature (the device certificate has an RSA key)", node.ErrInvalid)
		}
		agentNonce = r.Nonce
		verify = func(digest []byte) bool {
			// Any salt length: SPIRE's agent uses the largest, Sigil's the
			// hash size.
			return rsa.VerifyPSS(pub, crypto.SHA256, digest, r.Signature, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto}) == nil
		}
	}
	digest, err := signedDigest(serverNonce, agentNonce)
	if err != nil {
		return fmt.Errorf("%w: x509pop challenge response: %w", node.ErrInvalid, err)
	}
	if s.used.contains(agentNonce) {
		return fmt.Errorf("%w: its nonce was already used in an earlier attestation", ErrReplayed)
	}
	if !verify(digest) {
		return fmt.Errorf("%w: it is not a signature of this attestation's challenge by the key of the device certificate %s (another key, or an answer to an earlier challenge)",
			ErrBadSignature, describe(leaf))
	}
	s.used.add(agentNonce)
	return nil
}

// result builds the agent ID and the selectors of a verified device.
func (s *Server) result(leaf *x509.Certificate, chains [][]*x509.Certificate) (*node.Result, error) {
	sans := uriSANSelectors(leaf, s.td)
	path := "/" + Type + "/" + Fingerprint(leaf.Raw)
	if s.tmpl != nil {
		p, err := s.tmpl.Execute(TemplateData{
			Certificate:     leaf,
			PluginName:      Type,
			Fingerprint:     Fingerprint(leaf.Raw),
			SerialNumberHex: SerialNumberHex(leaf.SerialNumber),
			TrustDomain:     s.td.Name(),
			URISanSelectors: sans,
		})
		if err != nil {
			return nil, fmt.Errorf("%w: agent_path_template fails for the device certificate %s: %s", ErrUnusableCertificate, describe(leaf), clip.Cut(err.Error(), 120))
		}
		path = p
	}
	if err := spiffeid.ValidatePath(path); err != nil {
		return nil, fmt.Errorf("%w: the agent path %s for the device certificate %s is not a valid SPIFFE ID path: %w", ErrUnusableCertificate, clip.Quote(path), describe(leaf), err)
	}
	id, err := spiffeid.FromPath(s.td, "/spire/agent"+path)
	if err != nil {
		return nil, fmt.Errorf("%w: agent ID for path %s: %w", ErrUnusableCertificate, clip.Quote(path), err)
	}

	var values []string
	if cn := leaf.Subject.CommonName; cn != "" {
		values = append(values, "subject:cn:"+cn)
	}
	seen := map[string]bool{}
	for _, chain := range chains {
		for _, c := range chain[1:] {
			fp := Fingerprint(c.Raw)
			if !seen[fp] {
				seen[fp] = true
				values = append(values, "ca:fingerprint:"+fp)
			}
		}
	}
	if leaf.SerialNumber != nil {
		values = append(values, "serialnumber:"+SerialNumberHex(leaf.SerialNumber))
	}
	for k, v := range sans {
		values = append(values, "san:"+k+":"+v)
	}
	sels := make([]selector.Selector, 0, len(values))
	for _, v := range values {
		sel := selector.Selector{Type: Type, Value: v}
		if err := sel.Validate(); err != nil {
			return nil, fmt.Errorf("%w: the device certificate %s yields an invalid selector: %w", ErrUnusableCertificate, describe(leaf), err)
		}
		sels = append(sels, sel)
	}
	return &node.Result{AgentID: id, Selectors: selector.Dedupe(sels), CanReattest: true}, nil
}

// uriSANSelectors maps <key> to <value> for the leaf's URI SANs of the form
// x509pop://<trust domain>/<key>/<value> (the value may contain '/'; a
// later SAN with the same key wins, as in SPIRE).
func uriSANSelectors(leaf *x509.Certificate, td spiffeid.TrustDomain) map[string]string {
	out := map[string]string{}
	prefix := Type + "://" + td.Name() + "/"
	for _, u := range leaf.URIs {
		if !strings.HasPrefix(u.String(), prefix) {
			continue
		}
		key, value, ok := strings.Cut(strings.Trim(u.Path, "/"), "/")
		if !ok {
			continue
		}
		out[key] = value
	}
	return out
}

// usedNonces is how many agent nonces of successful attestations the
// server remembers to recognise a replayed response (32 bytes each). A
// replay older than that still fails: its signature covers another
// challenge.
const usedNonces = 4096

// nonceSet remembers the last n agent nonces.
type nonceSet struct {
	mu   sync.Mutex
	set  map[[NonceSize]byte]struct{}
	ring [][NonceSize]byte
	next int
}

func newNonceSet(n int) *nonceSet {
	return &nonceSet{set: make(map[[NonceSize]byte]struct{}, n), ring: make([][NonceSize]byte, 0, n)}
}

func (s *nonceSet) contains(nonce []byte) bool {
	if len(nonce) != NonceSize {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.set[[NonceSize]byte(nonce)]
	return ok
}

func (s *nonceSet) add(nonce []byte) {
	if len(nonce) != NonceSize {
		return
	}
	k := [NonceSize]byte(nonce)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.set[k]; ok {
		return
	}
	if len(s.ring) < cap(s.ring) {
		s.ring = append(s.ring, k)
	} else {
		delete(s.set, s.ring[s.next])
		s.ring[s.next] = k
		s.next = (s.next + 1) % len(s.ring)
	}
	s.set[k] = struct{}{}
}
