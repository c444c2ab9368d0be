package x509pop

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // SPIRE's fingerprint
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/attest/node/agentpath"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/testutil/testca"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// device is a device's files: its certificate (and key) and the
// intermediates it sends.
type device struct {
	cert *x509.Certificate
	key  crypto.Signer
	cfg  AgentConfig
}

// newDevice writes a device issued by ca: certificate_path holds the leaf,
// intermediates_path ca's chain up to (without) the root.
func newDevice(t *testing.T, ca *testca.CA, opts ...testca.Option) device {
	t.Helper()
	cert, key := ca.Leaf(t, opts...)
	dir := t.TempDir()
	cfg := AgentConfig{
		PrivateKeyPath:  filepath.Join(dir, "device.key"),
		CertificatePath: filepath.Join(dir, "device.crt"),
	}
	testca.WriteKeyPEM(t, cfg.PrivateKeyPath, key)
	testca.WriteCertsPEM(t, cfg.CertificatePath, cert)
	if inter := ca.Chain(); len(inter) > 0 {
		cfg.IntermediatesPath = filepath.Join(dir, "intermediates.crt")
		testca.WriteCertsPEM(t, cfg.IntermediatesPath, inter...)
	}
	return device{cert: cert, key: key, cfg: cfg}
}

func (d device) agent(t *testing.T) *Agent {
	t.Helper()
	a, err := NewAgent(d.cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// newServer returns a server half trusting roots (written to one bundle file).
func newServer(t *testing.T, cfg ServerConfig, clk clock.Clock, roots ...*testca.CA) *Server {
	t.Helper()
	if cfg.CABundlePath == "" && len(cfg.CABundlePaths) == 0 {
		cfg.CABundlePath = filepath.Join(t.TempDir(), "bundle.crt")
		var certs []*x509.Certificate
		for _, r := range roots {
			certs = append(certs, r.Cert)
		}
		testca.WriteCertsPEM(t, cfg.CABundlePath, certs...)
	}
	s, err := NewServer(cfg, ServerOptions{TrustDomain: td, ParseTemplate: parseTemplate, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func parseTemplate(text string) (PathTemplate, error) { return agentpath.Parse(text) }

// attest runs one attestation of agent against srv in memory.
func attest(t *testing.T, srv *Server, a *Agent) (*node.Result, error) {
	t.Helper()
	ctx := context.Background()
	sess, err := a.Begin(ctx)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	defer sess.Close()
	challenges := 0
	res, err := srv.Attest(ctx, sess.Payload(), func(ctx context.Context, ch []byte) ([]byte, error) {
		challenges++
		return sess.Respond(ctx, ch)
	})
	if err == nil && challenges != 1 {
		t.Fatalf("attestation took %d challenges, want 1", challenges)
	}
	return res, err
}

func ecKey(t *testing.T, c elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func rsaKey(t *testing.T, bits int) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func uris(t *testing.T, ss ...string) []*url.URL {
	t.Helper()
	out := make([]*url.URL, len(ss))
	for i, s := range ss {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = u
	}
	return out
}

func fingerprint(c *x509.Certificate) string {
	sum := sha1.Sum(c.Raw) //nolint:gosec // SPIRE's fingerprint
	return hex.EncodeToString(sum[:])
}

func selectorValues(sels []selector.Selector) []string {
	var out []string
	for _, s := range sels {
		if s.Type != Type {
			out = append(out, "WRONG TYPE "+s.String())
			continue
		}
		out = append(out, s.Value)
	}
	return out
}

func wantRefusal(t *testing.T, err, kind error, contains string) {
	t.Logf("refusal: %v", err)
	t.Helper()
	if err == nil {
		t.Fatalf("attestation succeeded, want %v", kind)
	}
	if !errors.Is(err, kind) {
		t.Fatalf("error %q does not wrap %q", err, kind)
	}
	if !strings.Contains(err.Error(), contains) {
		t.Fatalf("error %q does not contain %q", err, contains)
	}
	if len(err.Error()) > 400 {
		t.Fatalf("error is %d bytes long: %q", len(err.Error()), err)
	}
}

func TestAttestKeysAndChains(t *testing.T) {
	root := testca.New(t, testca.Subject("Device Root CA"))
	inter1 := root.Intermediate(t, testca.Subject("Device Intermediate 1"))
	inter2 := inter1.Intermediate(t, testca.Subject("Device Intermediate 2"))
	srv := newServer(t, ServerConfig{}, nil, root)

	for _, tc := range []struct {
		name string
		ca   *testca.CA
		key  crypto.Signer
	}{
		{"P-256 from root", root, ecKey(t, elliptic.P256())},
		{"P-384 via one intermediate", inter1, ecKey(t, elliptic.P384())},
		{"P-521 via two intermediates", inter2, ecKey(t, elliptic.P521())},
		{"RSA-2048 via two intermediates", inter2, rsaKey(t, 2048)},
		{"RSA-3072 from root", root, rsaKey(t, 3072)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDevice(t, tc.ca, testca.Subject("device-7"), testca.Key(tc.key), testca.Serial(0xabc))
			res, err := attest(t, srv, d.agent(t))
			if err != nil {
				t.Fatal(err)
			}
			if want := "spiffe://example.org/spire/agent/x509pop/" + fingerprint(d.cert); res.AgentID.String() != want {
				t.Errorf("agent ID %s, want %s", res.AgentID, want)
			}
			if !res.CanReattest {
				t.Error("CanReattest is false")
			}
			want := []string{"subject:cn:device-7", "serialnumber:0abc"}
			for _, c := range append(tc.ca.Chain(), tc.ca.Root().Cert) {
				want = append(want, "ca:fingerprint:"+fingerprint(c))
			}
			got := selectorValues(res.Selectors)
			if strings.Join(got, " ") != strings.Join(sorted(want), " ") {
				t.Errorf("selectors\n got %q\nwant %q", got, sorted(want))
			}
		})
	}
}

func sorted(values []string) []string {
	sels := make([]selector.Selector, len(values))
	for i, v := range values {
		sels[i] = selector.Selector{Type: Type, Value: v}
	}
	return selectorValues(selector.Dedupe(sels))
}

// TestKeyFileFormats: PKCS #1 and SEC 1 keys as well as PKCS #8, and
// intermediates appended to certificate_path instead of intermediates_path.
func TestKeyFileFormats(t *testing.T) {
	root := testca.New(t)
	inter := root.Intermediate(t)
	srv := newServer(t, ServerConfig{}, nil, root)
	ec := ecKey(t, elliptic.P256())
	rk := rsaKey(t, 2048)
	ecDER, err := x509.MarshalECPrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	for name, k := range map[string]struct {
		key crypto.Signer
		pem *pem.Block
	}{
		"SEC 1":  {ec, &pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER}},
		"PKCS 1": {rk, &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rk)}},
	} {
		t.Run(name, func(t *testing.T) {
			d := newDevice(t, inter, testca.Key(k.key))
			if err := os.WriteFile(d.cfg.PrivateKeyPath, pem.EncodeToMemory(k.pem), 0o600); err != nil {
				t.Fatal(err)
			}
			testca.WriteCertsPEM(t, d.cfg.CertificatePath, d.cert, inter.Cert)
			d.cfg.IntermediatesPath = ""
			if _, err := attest(t, srv, d.agent(t)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestURISANSelectorsAndTemplates(t *testing.T) {
	root := testca.New(t)
	d := newDevice(t, root, testca.Subject("Device-42"), testca.Serial(0x1234), testca.URIs(uris(t,
		"x509pop://example.org/datacenter/us-east-1",
		"x509pop://example.org/rack/r7/slot/3",     // the value may hold '/'
		"x509pop://other.org/datacenter/elsewhere", // another trust domain
		"x509pop://example.org/novalue",            // no value
		"spiffe://example.org/not/a/selector",
	)...), testca.DNSNames("device-42.example.org"))
	res, err := attest(t, newServer(t, ServerConfig{}, nil, root), d.agent(t))
	if err != nil {
		t.Fatal(err)
	}
	want := sorted([]string{
		"subject:cn:Device-42", "serialnumber:1234", "ca:fingerprint:" + fingerprint(root.Cert),
		"san:datacenter:us-east-1", "san:rack:r7/slot/3",
	})
	if got := selectorValues(res.Selectors); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("selectors\n got %q\nwant %q", got, want)
	}

	for tmpl, want := range map[string]string{
		"/cn/{{ .Subject.CommonName }}":                                           "/cn/Device-42",
		"/{{ .PluginName }}/{{ .TrustDomain }}/{{ .SerialNumberHex }}":            "/x509pop/example.org/1234",
		"/dc/{{ .URISanSelectors.datacenter }}/{{ .Subject.CommonName | lower }}": "/dc/us-east-1/device-42",
		"/{{ .PluginName }}/{{ .Fingerprint }}":                                   "/x509pop/" + fingerprint(d.cert),
	} {
		res, err := attest(t, newServer(t, ServerConfig{AgentPathTemplate: tmpl}, nil, root), d.agent(t))
		if err != nil {
			t.Errorf("%s: %v", tmpl, err)
			continue
		}
		if got := strings.TrimPrefix(res.AgentID.Path(), "/spire/agent"); got != want {
			t.Errorf("%s: path %s, want %s", tmpl, got, want)
		}
	}

	// A template that cannot give this device a path refuses it.
	for tmpl, msg := range map[string]string{
		"/dc/{{ .URISanSelectors.zone }}":      "agent_path_template fails",
		"/cn/{{ .Subject.CommonName }} x":      "is not a valid SPIFFE ID path",
		"cn/{{ .Subject.CommonName }}":         "is not a valid SPIFFE ID path",
		"/{{ .Subject.CommonName }}/../escape": "is not a valid SPIFFE ID path",
	} {
		_, err := attest(t, newServer(t, ServerConfig{AgentPathTemplate: tmpl}, nil, root), d.agent(t))
		wantRefusal(t, err, ErrUnusableCertificate, msg)
	}
}

func TestServerConfig(t *testing.T) {
	root := testca.New(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "good.crt")
	testca.WriteCertsPEM(t, good, root.Cert)
	keyOnly := filepath.Join(dir, "key.pem")
	testca.WriteKeyPEM(t, keyOnly, root.Key)
	garbage := filepath.Join(dir, "garbage.crt")
	if err := os.WriteFile(garbage, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("nope")}), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cfg  ServerConfig
		want string
	}{
		{ServerConfig{}, "one of ca_bundle_path or ca_bundle_paths is required"},
		{ServerConfig{CABundlePath: good, CABundlePaths: []string{good}}, "set only one of ca_bundle_path and ca_bundle_paths"},
		{ServerConfig{CABundlePaths: []string{good, ""}}, "ca_bundle_paths has an empty path"},
		{ServerConfig{CABundlePath: good, MaxIntermediates: -1}, "max_intermediates must be greater than 0"},
		{ServerConfig{CABundlePath: good, MaxRSAKeySize: -1}, "max_rsa_key_size must be greater than 0"},
		{ServerConfig{CABundlePath: filepath.Join(dir, "missing.crt")}, "no such file"},
		{ServerConfig{CABundlePaths: []string{good, keyOnly}}, "key.pem: no PEM CERTIFICATE block"},
		{ServerConfig{CABundlePath: garbage}, "garbage.crt: PEM block 1"},
		{ServerConfig{CABundlePath: good, AgentPathTemplate: "/{{ .Subject"}, "agent_path_template"},
		{ServerConfig{CABundlePath: good, AgentPathTemplate: "/{{ nosuchfunc .Subject }}"}, `function "nosuchfunc" not defined`},
	} {
		_, err := NewServer(tc.cfg, ServerOptions{TrustDomain: td, ParseTemplate: parseTemplate})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want one containing %q", tc.cfg, err, tc.want)
		}
	}
	if _, err := NewServer(ServerConfig{CABundlePath: good, AgentPathTemplate: "/x"}, ServerOptions{TrustDomain: td}); err == nil {
		t.Error("a template without a template engine was accepted")
	}
	if _, err := NewServer(ServerConfig{CABundlePaths: []string{good, good}}, ServerOptions{TrustDomain: td}); err != nil {
		t.Errorf("ca_bundle_paths: %v", err)
	}
}

func TestExpired(t *testing.T) {
	root := testca.New(t, testca.Subject("Device Root CA"))
	now := time.Now()
	t.Run("leaf expired", func(t *testing.T) {
		d := newDevice(t, root, testca.Subject("old-device"), testca.NotBefore(now.Add(-2*time.Hour)), testca.NotAfter(now.Add(-time.Hour)))
		_, err := attest(t, newServer(t, ServerConfig{}, nil, root), d.agent(t))
		wantRefusal(t, err, ErrCertificateExpired, `the device certificate "old-device"`)
		wantRefusal(t, err, node.ErrRefused, "expired at "+d.cert.NotAfter.UTC().Format(time.RFC3339))
	})
	t.Run("leaf not yet valid", func(t *testing.T) {
		d := newDevice(t, root, testca.Subject("future"), testca.NotBefore(now.Add(time.Hour)), testca.NotAfter(now.Add(2*time.Hour)))
		_, err := attest(t, newServer(t, ServerConfig{}, nil, root), d.agent(t))
		wantRefusal(t, err, ErrCertificateExpired, "is not valid before")
	})
	t.Run("leaf expires while the server runs", func(t *testing.T) {
		// The same device, attesting again after its certificate expired
		// (what a re-attesting agent does at renewal), is refused.
		clk := clock.NewFake(now)
		srv := newServer(t, ServerConfig{}, clk, root)
		d := newDevice(t, root, testca.NotAfter(now.Add(10*time.Minute)))
		if _, err := attest(t, srv, d.agent(t)); err != nil {
			t.Fatal(err)
		}
		clk.Add(11 * time.Minute)
		_, err := attest(t, srv, d.agent(t))
		wantRefusal(t, err, ErrCertificateExpired, "expired at")
	})
	t.Run("intermediate expired", func(t *testing.T) {
		inter := root.Intermediate(t, testca.Subject("Old Intermediate"), testca.NotBefore(now.Add(-2*time.Hour)), testca.NotAfter(now.Add(-time.Hour)))
		d := newDevice(t, inter, testca.NotBefore(now.Add(-2*time.Hour)))
		_, err := attest(t, newServer(t, ServerConfig{}, nil, root), d.agent(t))
		wantRefusal(t, err, ErrCertificateExpired, `intermediate certificate "Old Intermediate"`)
	})
}

func TestUntrusted(t *testing.T) {
	root := testca.New(t, testca.Subject("Device Root CA"))
	inter := root.Intermediate(t, testca.Subject("Device Issuing CA"))
	srv := newServer(t, ServerConfig{}, nil, root)

	t.Run("another CA", func(t *testing.T) {
		other := testca.New(t, testca.Subject("Someone Else's CA"))
		d := newDevice(t, other)
		_, err := attest(t, srv, d.agent(t))
		wantRefusal(t, err, ErrUntrusted, `issuer "CN=Someone Else's CA" is not a CA of the bundle and the agent sent no intermediate certificates`)
	})
	t.Run("another CA of the same name", func(t *testing.T) {
		impostor := testca.New(t, testca.Subject("Device Root CA"))
		d := newDevice(t, impostor, testca.Subject("impostor"))
		_, err := attest(t, srv, d.agent(t))
		wantRefusal(t, err, ErrUntrusted, `"impostor" (serial`)
		wantRefusal(t, err, ErrUntrusted, `names CA "Device Root CA" of the bundle as its issuer but is not signed by its key`)
	})
	t.Run("chain through another CA's intermediate", func(t *testing.T) {
		other := testca.New(t, testca.Subject("Other Root"))
		otherInter := other.Intermediate(t, testca.Subject("Other Issuing CA"))
		d := newDevice(t, otherInter)
		_, err := attest(t, srv, d.agent(t))
		wantRefusal(t, err, ErrUntrusted, `the chain the agent sent ends at "Other Issuing CA"`)
	})
	t.Run("missing intermediates", func(t *testing.T) {
		d := newDevice(t, inter)
		d.cfg.IntermediatesPath = ""
		_, err := attest(t, srv, d.agent(t))
		wantRefusal(t, err, ErrUntrusted, `issuer "CN=Device Issuing CA" is not a CA of the bundle and the agent sent no intermediate certificates (wrong CA, or intermediates_path not set)`)
	})
	t.Run("wrong intermediates", func(t *testing.T) {
		unrelated := root.Intermediate(t, testca.Subject("Unrelated CA"))
		d := newDevice(t, inter)
		testca.WriteCertsPEM(t, d.cfg.IntermediatesPath, unrelated.Cert)
		_, err := attest(t, srv, d.agent(t))
		wantRefusal(t, err, ErrUntrusted, "nor among the 1 intermediate certificates the agent sent")
	})
	t.Run("no digitalSignature", func(t *testing.T) {
		d := newDevice(t, root, testca.Subject("encipher-only"), testca.KeyUsage(x509.KeyUsageKeyEncipherment))
		_, err := attest(t, srv, d.agent(t))
		wantRefusal(t, err, ErrUnusableCertificate, `"encipher-only" (serial`)
		wantRefusal(t, err, ErrUnusableCertificate, "has no digitalSignature key usage")
	})
	t.Run("long subject", func(t *testing.T) {
		other := testca.New(t, testca.Subject(strings.Repeat("C", 5000)))
		d := newDevice(t, other, testca.Subject(strings.Repeat("L", 5000)))
		_, err := attest(t, srv, d.agent(t))
		wantRefusal(t, err, ErrUntrusted, "is not a CA of the bundle") // and at most 400 bytes
	})
}

// payloadOf returns the attestation data of a certificate chain.
func payloadOf(t *testing.T, certs ...[]byte) []byte {
	t.Helper()
	b, err := json.Marshal(attestationData{Certificates: certs})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func noChallenge(t *testing.T) node.ChallengeFunc {
	return func(context.Context, []byte) ([]byte, error) {
		t.Error("the server challenged invalid attestation data")
		return nil, errors.New("unexpected challenge")
	}
}

func TestInvalidAttestationData(t *testing.T) {
	root := testca.New(t)
	srv := newServer(t, ServerConfig{MaxRSAKeySize: 1024}, nil, root)
	leaf, _ := root.Leaf(t)
	bigRSA, _ := root.Leaf(t, testca.KeyOf(testca.RSA2048))
	ed := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	edLeaf, _ := root.Leaf(t, testca.Key(ed))
	inter := root.Cert.Raw
	for _, tc := range []struct {
		name    string
		payload []byte
		kind    error
		want    string
	}{
		{"empty", nil, node.ErrInvalid, "attestation data is empty"},
		{"oversized", make([]byte, MaxPayloadSize+1), node.ErrInvalid, "65537 bytes, more than 65536"},
		{"not JSON", []byte("join-token-abc"), node.ErrInvalid, "is not JSON"},
		{"not base64", []byte(`{"certificates": ["!!"]}`), node.ErrInvalid, "is not JSON"},
		{"no certificate", []byte(`{"certificates": []}`), node.ErrInvalid, "has no certificate"},
		{"other fields only", []byte(`{"certs": ["AA=="]}`), node.ErrInvalid, "has no certificate"},
		{"too many intermediates", payloadOf(t, leaf.Raw, inter, inter, inter, inter, inter), node.ErrInvalid, "5 intermediate certificates, more than max_intermediates (4)"},
		{"leaf not DER", payloadOf(t, []byte("garbage")), node.ErrInvalid, "the device certificate does not parse"},
		{"intermediate not DER", payloadOf(t, leaf.Raw, []byte("garbage")), node.ErrInvalid, "intermediate certificate 1 does not parse"},
		{"RSA key too large", payloadOf(t, bigRSA.Raw), node.ErrInvalid, "2048-bit RSA key, more than max_rsa_key_size (1024)"},
		{"Ed25519", payloadOf(t, edLeaf.Raw), ErrUnusableCertificate, "has a Ed25519 key; x509pop proves ECDSA and RSA keys"},
	} {
		_, err := srv.Attest(context.Background(), tc.payload, noChallenge(t))
		if err == nil || !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %v containing %q", tc.name, err, tc.kind, tc.want)
		}
	}
	// Four intermediates are allowed.
	if _, err := srv.Attest(context.Background(), payloadOf(t, leaf.Raw, inter, inter, inter, inter), func(context.Context, []byte) ([]byte, error) {
		return nil, errors.New("stop here")
	}); err == nil || !strings.Contains(err.Error(), "stop here") {
		t.Errorf("four intermediates: %v, want the challenge", err)
	}
}

// challengeOf runs an attestation up to its challenge and returns it.
func challengeOf(t *testing.T, srv *Server, payload []byte) []byte {
	t.Helper()
	var got []byte
	stop := errors.New("stop")
	_, err := srv.Attest(context.Background(), payload, func(_ context.Context, ch []byte) ([]byte, error) {
		got = ch
		return nil, stop
	})
	if !errors.Is(err, stop) {
		t.Fatalf("Attest: %v, want the challenge's error", err)
	}
	return got
}

// answerWith attests payload, answering the challenge with respond.
func answerWith(srv *Server, payload []byte, respond node.ChallengeFunc) error {
	_, err := srv.Attest(context.Background(), payload, respond)
	return err
}

func TestProofOfPossession(t *testing.T) {
	root := testca.New(t)
	srv := newServer(t, ServerConfig{}, nil, root)
	for _, kt := range []struct {
		name string
		key  func() crypto.Signer
	}{
		{"ECDSA", func() crypto.Signer { return ecKey(t, elliptic.P256()) }},
		{"RSA", func() crypto.Signer { return rsaKey(t, 2048) }},
	} {
		t.Run(kt.name, func(t *testing.T) {
			d := newDevice(t, root, testca.Subject("dev"), testca.Key(kt.key()))
			ctx := context.Background()
			sess, err := d.agent(t).Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			payload := sess.Payload()

			t.Run("wrong key", func(t *testing.T) {
				// Another device's key of the same type answers for this
				// device's certificate.
				other := newDevice(t, root, testca.Key(kt.key()))
				otherSess, err := other.agent(t).Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				err = answerWith(srv, payload, otherSess.Respond)
				wantRefusal(t, err, ErrBadSignature, `not a signature of this attestation's challenge by the key of the device certificate "dev"`)
			})
			t.Run("answer to an earlier challenge", func(t *testing.T) {
				old := challengeOf(t, srv, payload)
				s, _ := d.agent(t).Begin(ctx)
				oldAnswer, err := s.Respond(ctx, old)
				if err != nil {
					t.Fatal(err)
				}
				err = answerWith(srv, payload, func(context.Context, []byte) ([]byte, error) { return oldAnswer, nil })
				wantRefusal(t, err, ErrBadSignature, "or an answer to an earlier challenge")
			})
			t.Run("replayed answer", func(t *testing.T) {
				var answer []byte
				s, _ := d.agent(t).Begin(ctx)
				err := answerWith(srv, payload, func(ctx context.Context, ch []byte) ([]byte, error) {
					a, err := s.Respond(ctx, ch)
					answer = a
					return a, err
				})
				if err != nil {
					t.Fatal(err)
				}
				err = answerWith(srv, payload, func(context.Context, []byte) ([]byte, error) { return answer, nil })
				wantRefusal(t, err, ErrReplayed, "its nonce was already used in an earlier attestation")
			})
			t.Run("malformed answers", func(t *testing.T) {
				nonce := make([]byte, NonceSize)
				ecdsaOnly, _ := json.Marshal(response{ECDSASignature: &ecdsaResponse{Nonce: nonce, R: []byte{1}, S: []byte{1}}})
				rsaOnly, _ := json.Marshal(response{RSASignature: &rsaResponse{Nonce: nonce, Signature: []byte{1}}})
				wrongMember, want := rsaOnly, "has no ecdsa_signature (the device certificate has an ECDSA key)"
				shortNonce, _ := json.Marshal(response{ECDSASignature: &ecdsaResponse{Nonce: nonce[:16], R: []byte{1}, S: []byte{1}}})
				if kt.name == "RSA" {
					wrongMember, want = ecdsaOnly, "has no rsa_signature (the device certificate has an RSA key)"
					shortNonce, _ = json.Marshal(response{RSASignature: &rsaResponse{Nonce: nonce[:16], Signature: []byte{1}}})
				}
				for answer, want := range map[string]string{
					"":                                     "is not JSON",
					"{":                                    "is not JSON",
					string(make([]byte, MaxMessageSize+1)): "more than 8192",
					"{}":                                   "has no",
					string(wrongMember):                    want,
					string(shortNonce):                     "the response nonce is 16 bytes, not 32",
				} {
					err := answerWith(srv, payload, func(context.Context, []byte) ([]byte, error) { return []byte(answer), nil })
					wantRefusal(t, err, node.ErrInvalid, want)
				}
			})
			t.Run("good answer", func(t *testing.T) {
				if err := answerWith(srv, payload, sess.Respond); err != nil {
					t.Fatal(err)
				}
			})
		})
	}
}

// TestWireCompatibility checks the JSON shapes against SPIRE's (field
// names, one member per key type) and that answers signed as SPIRE's agent
// signs them (ECDSA r and s over the digest, RSA-PSS with the largest
// salt) are accepted, and Sigil's verify as SPIRE's server verifies them.
func TestWireCompatibility(t *testing.T) {
	root := testca.New(t)
	srv := newServer(t, ServerConfig{}, nil, root)
	ctx := context.Background()
	for _, key := range []crypto.Signer{ecKey(t, elliptic.P256()), rsaKey(t, 2048)} {
		d := newDevice(t, root, testca.Key(key))
		sess, err := d.agent(t).Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var data map[string][][]byte
		if err := json.Unmarshal(sess.Payload(), &data); err != nil || len(data["certificates"]) != 1 || string(data["certificates"][0]) != string(d.cert.Raw) {
			t.Fatalf("payload %s: %v", sess.Payload(), err)
		}
		ch := challengeOf(t, srv, sess.Payload())
		var raw map[string]map[string][]byte
		if err := json.Unmarshal(ch, &raw); err != nil {
			t.Fatal(err)
		}
		member := "ecdsa_signature"
		if _, ok := key.(*rsa.PrivateKey); ok {
			member = "rsa_signature"
		}
		if len(raw[member]["nonce"]) != NonceSize || len(raw) > 2 || (len(raw) == 2 && raw[map[string]string{"ecdsa_signature": "rsa_signature", "rsa_signature": "ecdsa_signature"}[member]] != nil) {
			t.Fatalf("challenge %s", ch)
		}

		// Sigil's answer verifies as SPIRE verifies it.
		answer, err := sess.Respond(ctx, ch)
		if err != nil {
			t.Fatal(err)
		}
		var resp map[string]map[string][]byte
		if err := json.Unmarshal(answer, &resp); err != nil {
			t.Fatal(err)
		}
		digest, _ := signedDigest(raw[member]["nonce"], resp[member]["nonce"])
		switch k := key.(type) {
		case *ecdsa.PrivateKey:
			if !ecdsa.Verify(&k.PublicKey, digest, new(big.Int).SetBytes(resp[member]["r"]), new(big.Int).SetBytes(resp[member]["s"])) {
				t.Error("ECDSA answer does not verify")
			}
		case *rsa.PrivateKey:
			if err := rsa.VerifyPSS(&k.PublicKey, crypto.SHA256, digest, resp[member]["signature"], nil); err != nil {
				t.Errorf("RSA answer does not verify: %v", err)
			}
		}

		// An answer made as SPIRE's agent makes it is accepted.
		err = answerWith(srv, sess.Payload(), func(_ context.Context, ch []byte) ([]byte, error) {
			var raw map[string]map[string][]byte
			if err := json.Unmarshal(ch, &raw); err != nil {
				return nil, err
			}
			agentNonce := make([]byte, NonceSize)
			_, _ = rand.Read(agentNonce)
			digest, err := signedDigest(raw[member]["nonce"], agentNonce)
			if err != nil {
				return nil, err
			}
			var out map[string]any
			switch k := key.(type) {
			case *ecdsa.PrivateKey:
				r, s, err := ecdsa.Sign(rand.Reader, k, digest)
				if err != nil {
					return nil, err
				}
				out = map[string]any{"rsa_signature": nil, member: map[string][]byte{"nonce": agentNonce, "r": r.Bytes(), "s": s.Bytes()}}
			case *rsa.PrivateKey:
				sig, err := rsa.SignPSS(rand.Reader, k, crypto.SHA256, digest, nil)
				if err != nil {
					return nil, err
				}
				out = map[string]any{member: map[string][]byte{"nonce": agentNonce, "signature": sig}, "ecdsa_signature": nil}
			}
			return json.Marshal(out)
		})
		if err != nil {
			t.Errorf("SPIRE-style answer refused: %v", err)
		}
	}
}

func TestAgent(t *testing.T) {
	root := testca.New(t)
	ctx := context.Background()

	t.Run("config", func(t *testing.T) {
		for cfg, want := range map[AgentConfig]string{
			{}:                     "private_key_path is required\ncertificate_path is required",
			{PrivateKeyPath: "k"}:  "certificate_path is required",
			{CertificatePath: "c"}: "private_key_path is required",
		} {
			if _, err := NewAgent(cfg); err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%+v: %v, want %q", cfg, err, want)
			}
		}
	})
	t.Run("files", func(t *testing.T) {
		d := newDevice(t, root)
		other := newDevice(t, root)
		for name, tc := range map[string]struct {
			cfg  AgentConfig
			want string
		}{
			"missing key":           {AgentConfig{CertificatePath: d.cfg.CertificatePath, PrivateKeyPath: "/nonexistent"}, "private_key_path: open /nonexistent"},
			"missing certificate":   {AgentConfig{CertificatePath: "/nonexistent", PrivateKeyPath: d.cfg.PrivateKeyPath}, "certificate_path: open /nonexistent"},
			"key of another device": {AgentConfig{CertificatePath: d.cfg.CertificatePath, PrivateKeyPath: other.cfg.PrivateKeyPath}, "private key does not match public key"},
			"missing intermediates": {AgentConfig{CertificatePath: d.cfg.CertificatePath, PrivateKeyPath: d.cfg.PrivateKeyPath, IntermediatesPath: "/nonexistent"}, "intermediates_path: open /nonexistent"},
			"intermediates not PEM": {AgentConfig{CertificatePath: d.cfg.CertificatePath, PrivateKeyPath: d.cfg.PrivateKeyPath, IntermediatesPath: d.cfg.PrivateKeyPath}, "no PEM CERTIFICATE block"},
		} {
			a, err := NewAgent(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := a.Begin(ctx); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: %v, want %q", name, err, tc.want)
			}
		}
	})
	t.Run("Ed25519 key", func(t *testing.T) {
		d := newDevice(t, root, testca.Key(ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))))
		if _, err := d.agent(t).Begin(ctx); err == nil || !strings.Contains(err.Error(), "x509pop proves ECDSA and RSA keys") {
			t.Errorf("Begin: %v", err)
		}
	})
	t.Run("rotated certificate is read at the next attestation", func(t *testing.T) {
		srv := newServer(t, ServerConfig{}, nil, root)
		d := newDevice(t, root)
		a := d.agent(t)
		first, err := attest(t, srv, a)
		if err != nil {
			t.Fatal(err)
		}
		next := newDevice(t, root)
		for _, f := range [][2]string{{next.cfg.CertificatePath, d.cfg.CertificatePath}, {next.cfg.PrivateKeyPath, d.cfg.PrivateKeyPath}} {
			b, err := os.ReadFile(f[0])
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(f[1], b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		second, err := attest(t, srv, a)
		if err != nil {
			t.Fatal(err)
		}
		if want := "/spire/agent/x509pop/" + fingerprint(next.cert); second.AgentID.Path() != want || first.AgentID == second.AgentID {
			t.Errorf("after rotation: %s, want %s", second.AgentID, want)
		}
	})
	t.Run("challenges", func(t *testing.T) {
		d := newDevice(t, root)
		nonce := make([]byte, NonceSize)
		for ch, want := range map[string]string{
			`{"rsa_signature": {"nonce": "` + b64(nonce) + `"}}`: "challenge asks for an RSA signature for an ECDSA key",
			`{}`: "challenge has neither rsa_signature nor ecdsa_signature for an ECDSA key",
			`{"ecdsa_signature": {"nonce": "` + b64(nonce[:8]) + `"}}`: "the challenge nonce is 8 bytes, not 32",
			`[1]`:                                  "challenge is not JSON",
			string(make([]byte, MaxMessageSize+1)): "challenge is 8193 bytes",
		} {
			s, err := d.agent(t).Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Respond(ctx, []byte(ch)); err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%.40s: %v, want %q", ch, err, want)
			}
		}
		s, _ := d.agent(t).Begin(ctx)
		good := `{"ecdsa_signature": {"nonce": "` + b64(nonce) + `"}}`
		if _, err := s.Respond(ctx, []byte(good)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Respond(ctx, []byte(good)); err == nil || !strings.Contains(err.Error(), "second challenge") {
			t.Errorf("second challenge: %v", err)
		}
	})
}

func b64(b []byte) string {
	s, _ := json.Marshal(b)
	return strings.Trim(string(s), `"`)
}

func TestSelectorKind(t *testing.T) {
	r, err := selector.NewRegistry(SelectorKind())
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"subject:cn:device-1", "subject:cn:a:b c", "ca:fingerprint:" + strings.Repeat("0a", 20),
		"serialnumber:0abc", "serialnumber:01", "san:datacenter:us-east-1", "san:rack:r7/slot/3"} {
		if err := r.Check(selector.Selector{Type: Type, Value: v}); err != nil {
			t.Errorf("x509pop:%s refused: %v", v, err)
		}
	}
	for v, want := range map[string]string{
		"cn:device":      "must start with one of ca:, san:, serialnumber:, subject:",
		"subject:o:Acme": `the only subject selector is "subject:cn:<common name>"`,
		"subject:cn:":    `the only subject selector`,
		"ca:sha256:ab":   `the only ca selector is "ca:fingerprint:`,
		"ca:fingerprint:" + strings.Repeat("0A", 20): "is not a SHA-1 fingerprint",
		"ca:fingerprint:abc":                         "is not a SHA-1 fingerprint",
		"serialnumber:abc":                           "even number of digits",
		"serialnumber:0ABC":                          "lowercase hex",
		"san:dns":                                    "is not <key>:<value>",
		"san::x":                                     "is not <key>:<value>",
		"san:k:":                                     "is not <key>:<value>",
	} {
		err := r.Check(selector.Selector{Type: Type, Value: v})
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), `NodeAttestor "x509pop" never produces`) {
			t.Errorf("x509pop:%s: %v, want %q", v, err, want)
		}
	}
}

// TestSelectorsCheck: every selector Attest produces passes SelectorKind.
func TestSelectorsCheck(t *testing.T) {
	r, _ := selector.NewRegistry(SelectorKind())
	root := testca.New(t)
	inter := root.Intermediate(t)
	d := newDevice(t, inter, testca.Subject("d"), testca.URIs(uris(t, "x509pop://example.org/a/b")...), testca.Serial(1))
	res, err := attest(t, newServer(t, ServerConfig{}, nil, root), d.agent(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Selectors) != 5 {
		t.Errorf("selectors %v", res.Selectors)
	}
	for _, s := range res.Selectors {
		if err := r.Check(s); err != nil {
			t.Error(err)
		}
	}
}

// The agent half is what the agent manager runs (manager.NodeAttestor,
// declared there).
var _ interface {
	Type() string
	Begin(context.Context) (node.Session, error)
} = (*Agent)(nil)
