package servercli

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"

	"github.com/sigil-spiffe/sigil/internal/cli/cliutil"
)

// ttlFlag is a lifetime given either as seconds ("600", as SPIRE) or as a
// Go duration ("10m", "1h30m"). It must fit the API's int32 seconds: a
// value that does not is refused rather than wrapped.
type ttlFlag struct{ d time.Duration }

// maxTTLSeconds is the largest lifetime the API's int32 fields carry.
const maxTTLSeconds = 1<<31 - 1

func (f *ttlFlag) String() string {
	if f == nil || f.d == 0 {
		return "0"
	}
	return f.d.String()
}

func (f *ttlFlag) Set(v string) error {
	tooLong := fmt.Errorf("%q is too long: at most %d seconds (about 68 years)", v, maxTTLSeconds)
	if strings.Trim(v, "0123456789") == "" && v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n > maxTTLSeconds {
			return tooLong
		}
		f.d = time.Duration(n) * time.Second
		return nil
	}
	if strings.HasPrefix(v, "-") {
		return fmt.Errorf("%q: must not be negative", v)
	}
	d, err := time.ParseDuration(v)
	if err != nil { // also a duration beyond int64 nanoseconds
		return fmt.Errorf("%q is neither seconds nor a duration like 10m or 1h (of at most %d seconds)", v, maxTTLSeconds)
	}
	if (d+time.Second-1)/time.Second > maxTTLSeconds {
		return tooLong
	}
	f.d = d
	return nil
}

// seconds rounds up to whole seconds (Set keeps it within int32).
func (f *ttlFlag) seconds() int32 {
	return int32((f.d + time.Second - 1) / time.Second)
}

// ---- token generate ----

type tokenGenerateCmd struct {
	spiffeID string
	ttl      ttlFlag
}

func (c *tokenGenerateCmd) flags(fs *flag.FlagSet) {
	c.ttl.d = 600 * time.Second
	fs.StringVar(&c.spiffeID, "spiffeID", "", "Additional SPIFFE ID to assign the token owner (optional)")
	fs.Var(&c.ttl, "ttl", "Token TTL in seconds (or a duration such as 10m)")
}

func (c *tokenGenerateCmd) run(ctx context.Context, s *session) error {
	if c.ttl.d <= 0 {
		return errors.New("-ttl must be positive")
	}
	req := &agentv1.CreateJoinTokenRequest{Ttl: c.ttl.seconds()}
	if c.spiffeID != "" {
		id, err := parseID("-spiffeID", c.spiffeID)
		if err != nil {
			return err
		}
		req.AgentId = id
	}
	client, err := s.agentClient()
	if err != nil {
		return err
	}
	tok, err := client.CreateJoinToken(ctx, req)
	if err != nil {
		return fmt.Errorf("creating join token: %w", err)
	}
	if s.json() {
		return s.printJSON(tok)
	}
	s.printf("Token: %s\n", tok.GetValue())
	return nil
}

// ---- x509 mint ----

type x509MintCmd struct {
	spiffeID string
	ttl      ttlFlag
	dnsNames stringsFlag
	write    string
}

func (c *x509MintCmd) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.spiffeID, "spiffeID", "", "SPIFFE ID of the X509-SVID")
	fs.Var(&c.ttl, "ttl", "TTL of the X509-SVID (seconds or a duration such as 1h; server default if absent)")
	fs.Var(&c.dnsNames, "dns", "DNS name that will be included in SVID. Can be used more than once")
	fs.StringVar(&c.write, "write", "", "Directory to write output to instead of stdout")
}

// generateKey makes the key of minted X509-SVIDs; tests may replace it.
var generateKey = func() (crypto.Signer, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

func (c *x509MintCmd) run(ctx context.Context, s *session) error {
	if c.spiffeID == "" {
		return errors.New("spiffeID must be specified: use -spiffeID spiffe://<trust domain>/<path>")
	}
	id, err := spiffeid.FromString(c.spiffeID)
	if err != nil {
		return fmt.Errorf("invalid -spiffeID %q: %w", c.spiffeID, err)
	}
	key, err := generateKey()
	if err != nil {
		return fmt.Errorf("unable to generate key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		URIs:     []*url.URL{id.URL()},
		DNSNames: c.dnsNames,
	}, key)
	if err != nil {
		return fmt.Errorf("unable to generate CSR: %w", err)
	}
	svidClient, err := s.svidClient()
	if err != nil {
		return err
	}
	resp, err := svidClient.MintX509SVID(ctx, &svidv1.MintX509SVIDRequest{Csr: csr, Ttl: c.ttl.seconds()})
	if err != nil {
		return fmt.Errorf("unable to mint SVID: %w", err)
	}
	chain := resp.GetSvid().GetCertChain()
	if len(chain) == 0 {
		return errors.New("server response missing SVID chain")
	}
	bundleClient, err := s.bundleClient()
	if err != nil {
		return err
	}
	bundle, err := bundleClient.GetBundle(ctx, &bundlev1.GetBundleRequest{})
	if err != nil {
		return fmt.Errorf("unable to get the trust bundle: %w", err)
	}
	if len(bundle.GetX509Authorities()) == 0 {
		return errors.New("server bundle has no X.509 authorities")
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return fmt.Errorf("server returned an invalid X509-SVID: %w", err)
	}
	if c.ttl.d > 0 && time.Until(leaf.NotAfter) < c.ttl.d-time.Minute {
		s.errorf("X509-SVID lifetime was capped shorter than specified ttl; expires %q\n", leaf.NotAfter.UTC().Format(time.RFC3339))
	}

	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encoding private key: %w", err)
	}
	svidPEM := encodeCerts(chain)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	var roots [][]byte
	for _, a := range bundle.GetX509Authorities() {
		roots = append(roots, a.GetAsn1())
	}
	bundlePEM := encodeCerts(roots)

	if c.write != "" {
		if err := os.MkdirAll(c.write, 0o700); err != nil {
			return fmt.Errorf("creating -write directory: %w", err)
		}
		svidPath := filepath.Join(c.write, "svid.pem")
		keyPath := filepath.Join(c.write, "key.pem")
		bundlePath := filepath.Join(c.write, "bundle.pem")
		if err := cliutil.WriteFile(svidPath, svidPEM, 0o644); err != nil {
			return fmt.Errorf("unable to write SVID: %w", err)
		}
		if err := cliutil.WriteFile(keyPath, keyPEM, 0o600); err != nil {
			return fmt.Errorf("unable to write key: %w", err)
		}
		if err := cliutil.WriteFile(bundlePath, bundlePEM, 0o644); err != nil {
			return fmt.Errorf("unable to write bundle: %w", err)
		}
		if s.json() {
			return s.jsonValue(map[string]string{"svid_path": svidPath, "key_path": keyPath, "bundle_path": bundlePath})
		}
		s.printf("X509-SVID written to %s\n", svidPath)
		s.printf("Private key written to %s\n", keyPath)
		s.printf("Root CAs written to %s\n", bundlePath)
		return nil
	}
	if s.json() {
		// SPIRE's shape: DER certificates and PKCS#8 key, base64 (as
		// encoding/json writes []byte).
		return s.jsonValue(struct {
			X509SVID   [][]byte `json:"x509_svid"`
			PrivateKey []byte   `json:"private_key"`
			RootCAs    [][]byte `json:"root_cas"`
		}{chain, keyDER, roots})
	}
	s.printf("X509-SVID:\n%s\n", svidPEM)
	s.printf("Private key:\n%s\n", keyPEM)
	s.printf("Root CAs:\n%s\n", bundlePEM)
	return nil
}

func encodeCerts(ders [][]byte) []byte {
	var b bytes.Buffer
	for _, d := range ders {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: d})
	}
	return b.Bytes()
}

// jsonValue prints a plain Go value as indented JSON.
func (s *session) jsonValue(v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding JSON output: %w", err)
	}
	_, err = fmt.Fprintln(s.stdout, string(b))
	return err
}

// ---- jwt mint ----

type jwtMintCmd struct {
	spiffeID  string
	audiences stringsFlag
	ttl       ttlFlag
	write     string
}

func (c *jwtMintCmd) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.spiffeID, "spiffeID", "", "SPIFFE ID of the JWT-SVID")
	fs.Var(&c.audiences, "audience", "Audience claim that will be included in the SVID. Can be used more than once")
	fs.Var(&c.ttl, "ttl", "TTL of the JWT-SVID (seconds or a duration such as 5m; server default if absent)")
	fs.StringVar(&c.write, "write", "", "File to write token to instead of stdout")
}

func (c *jwtMintCmd) run(ctx context.Context, s *session) error {
	if c.spiffeID == "" {
		return errors.New("spiffeID must be specified: use -spiffeID spiffe://<trust domain>/<path>")
	}
	if len(c.audiences) == 0 {
		return errors.New("at least one audience must be specified: use -audience")
	}
	id, err := parseID("-spiffeID", c.spiffeID)
	if err != nil {
		return err
	}
	client, err := s.svidClient()
	if err != nil {
		return err
	}
	resp, err := client.MintJWTSVID(ctx, &svidv1.MintJWTSVIDRequest{
		Id:       id,
		Audience: c.audiences,
		Ttl:      c.ttl.seconds(),
	})
	if err != nil {
		return fmt.Errorf("unable to mint SVID: %w", err)
	}
	token := resp.GetSvid().GetToken()
	if token == "" {
		return errors.New("server response missing token")
	}
	if exp := resp.GetSvid().GetExpiresAt(); exp != 0 && c.ttl.d > 0 {
		if eol := time.Unix(exp, 0); time.Until(eol) < c.ttl.d-time.Minute {
			s.errorf("JWT-SVID lifetime was capped shorter than specified ttl; expires %q\n", eol.UTC().Format(time.RFC3339))
		}
	}
	if c.write != "" {
		if err := cliutil.WriteFile(c.write, []byte(token), 0o600); err != nil {
			return fmt.Errorf("unable to write token: %w", err)
		}
		if s.json() {
			return s.jsonValue(map[string]string{"token_path": c.write})
		}
		s.printf("JWT-SVID written to %s\n", c.write)
		return nil
	}
	if s.json() {
		return s.printJSON(resp)
	}
	s.printf("%s\n", token)
	return nil
}
