package tpm_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/attest/node/tpm"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/testutil/swtpm"
)

func TestMain(m *testing.M) { os.Exit(swtpm.Main(m)) }

var td = spiffeid.RequireTrustDomainFromString("example.org")

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

// ekHash computes the community plugin's EK hash from the EK certificate
// as the swtpm helper reads it, independently of the agent half.
func ekHash(t *testing.T, tp *swtpm.TPM) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(tp.EKCertificate(t).PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// caDir returns a directory holding the given certificate files.
func caDir(t *testing.T, files ...string) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func newServer(t *testing.T, cfg tpm.ServerConfig) *tpm.Server {
	t.Helper()
	s, err := tpm.NewServer(td, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// attest runs a whole attestation of the agent on tp against s; tamper,
// if set, may change the challenge before the agent sees it and the
// response before the server sees it.
type tamper struct {
	payload   func([]byte) []byte
	challenge func([]byte) []byte
	response  func([]byte) []byte
}

func attest(t *testing.T, s *tpm.Server, tp *swtpm.TPM, tm tamper) (*node.Result, error) {
	t.Helper()
	a := tpm.NewAgent(tpm.AgentConfig{TPMPath: tp.Socket})
	if a.Type() != "tpm" || s.Type() != "tpm" {
		t.Fatalf("types %q, %q", a.Type(), s.Type())
	}
	sess, err := a.Begin(ctx(t))
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	defer sess.Close()
	payload := sess.Payload()
	if tm.payload != nil {
		payload = tm.payload(payload)
	}
	challenges := 0
	return s.Attest(ctx(t), payload, func(c context.Context, ch []byte) ([]byte, error) {
		challenges++
		if challenges > 1 {
			t.Fatal("more than one challenge")
		}
		if tm.challenge != nil {
			ch = tm.challenge(ch)
		}
		rsp, err := sess.Respond(c, ch)
		if err != nil {
			return nil, err
		}
		if tm.response != nil {
			rsp = tm.response(rsp)
		}
		return rsp, nil
	})
}

func wantAccepted(t *testing.T, res *node.Result, err error, hash string, extra ...string) {
	t.Helper()
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}
	if want := "spiffe://example.org/spire/agent/tpm/" + hash; res.AgentID.String() != want {
		t.Fatalf("agent ID %s, want %s", res.AgentID, want)
	}
	var got []string
	for _, s := range res.Selectors {
		got = append(got, s.String())
	}
	want := append([]string{"tpm:pub_hash:" + hash}, extra...)
	if !slices.Equal(got, want) {
		t.Fatalf("selectors %q, want %q", got, want)
	}
	if !res.CanReattest {
		t.Fatal("CanReattest is false")
	}
	// Every selector passes the selector kind's check.
	r, err := selector.NewRegistry(tpm.SelectorKinds()...)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range res.Selectors {
		if err := r.Check(s); err != nil {
			t.Fatalf("selector %s refused by its kind: %v", s, err)
		}
	}
}

func wantErr(t *testing.T, err error, kind error, text string) {
	t.Helper()
	if err == nil {
		t.Fatal("attestation accepted")
	}
	if kind != nil && !errors.Is(err, kind) {
		t.Fatalf("error %v does not wrap %v", err, kind)
	}
	if kind == nil && (errors.Is(err, node.ErrInvalid) || errors.Is(err, node.ErrRefused)) {
		t.Fatalf("error %v is a refusal, want a failure", err)
	}
	if !strings.Contains(err.Error(), text) {
		t.Fatalf("error %q does not say %q", err, text)
	}
}

// TestTPMAttestByCA: an EK certificate chaining to a CA in ek_ca_path is
// accepted (the issuing CA alone, or with its root); a CA of another
// manufacturer is refused.
func TestTPMAttestByCA(t *testing.T) {
	im := swtpm.Shared(t)
	tp := im.Start(t)
	hash := ekHash(t, tp)
	for name, dir := range map[string]string{
		"issuer":      caDir(t, im.IssuerCertPath()),
		"issuer+root": caDir(t, im.IssuerCertPath(), im.RootCertPath()),
	} {
		t.Run(name, func(t *testing.T) {
			res, err := attest(t, newServer(t, tpm.ServerConfig{EKCAPath: dir}), tp, tamper{})
			wantAccepted(t, res, err, hash)
		})
	}
	t.Run("other manufacturer", func(t *testing.T) {
		other := swtpm.NewImage(t, swtpm.Options{})
		_, err := attest(t, newServer(t, tpm.ServerConfig{EKCAPath: caDir(t, other.IssuerCertPath(), other.RootCertPath())}), tp, tamper{})
		wantErr(t, err, node.ErrRefused, "does not chain to a manufacturer CA")
	})
	t.Run("root only", func(t *testing.T) {
		// The EK certificate is issued by an intermediate the server
		// does not have.
		_, err := attest(t, newServer(t, tpm.ServerConfig{EKCAPath: caDir(t, im.RootCertPath())}), tp, tamper{})
		wantErr(t, err, node.ErrRefused, "does not chain")
	})
}

// TestTPMAttestByHash: an EK whose public key hash is listed (inline, or
// as a file in ek_hash_path) is accepted without a CA; an unknown EK is
// refused.
func TestTPMAttestByHash(t *testing.T) {
	tp := swtpm.Shared(t).Start(t)
	hash := ekHash(t, tp)

	res, err := attest(t, newServer(t, tpm.ServerConfig{EKHashes: []string{strings.Repeat("0", 64), hash}}), tp, tamper{})
	wantAccepted(t, res, err, hash)

	dir := t.TempDir()
	s := newServer(t, tpm.ServerConfig{EKHashPath: dir})
	_, err = attest(t, s, tp, tamper{})
	wantErr(t, err, node.ErrRefused, "is not in the allowed EK hashes")
	// Allowed from the next attestation on, without a restart.
	if err := os.WriteFile(filepath.Join(dir, hash), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	res, err = attest(t, s, tp, tamper{})
	wantAccepted(t, res, err, hash)

	_, err = attest(t, newServer(t, tpm.ServerConfig{EKHashes: []string{strings.Repeat("a", 64)}}), tp, tamper{})
	wantErr(t, err, node.ErrRefused, hash)
}

// TestTPMAttestWrongSecretRefused: a response that does not carry the
// activated secret is refused.
func TestTPMAttestWrongSecretRefused(t *testing.T) {
	tp := swtpm.Shared(t).Start(t)
	s := newServer(t, tpm.ServerConfig{EKHashes: []string{ekHash(t, tp)}})
	_, err := attest(t, s, tp, tamper{response: func(b []byte) []byte {
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		sec := m["secret"].(string)
		m["secret"] = "A" + sec[1:]
		if m["secret"] == sec {
			m["secret"] = "B" + sec[1:]
		}
		out, _ := json.Marshal(m)
		return out
	}})
	wantErr(t, err, node.ErrRefused, "did not recover the credential")
}

// TestTPMAttestAKOfAnotherTPMRefused: a trusted EK presented with an AK
// of another TPM (a relay) cannot activate the credential in either TPM.
func TestTPMAttestAKOfAnotherTPMRefused(t *testing.T) {
	trusted := swtpm.Shared(t).Start(t)
	attacker := swtpm.NewImage(t, swtpm.Options{}).Start(t)
	s := newServer(t, tpm.ServerConfig{EKHashes: []string{ekHash(t, trusted)}})

	tsess, err := tpm.NewAgent(tpm.AgentConfig{TPMPath: trusted.Socket}).Begin(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	var trustedData map[string]json.RawMessage
	if err := json.Unmarshal(tsess.Payload(), &trustedData); err != nil {
		t.Fatal(err)
	}
	for _, answerer := range []string{"attacker", "trusted"} {
		t.Run(answerer, func(t *testing.T) {
			asess, err := tpm.NewAgent(tpm.AgentConfig{TPMPath: attacker.Socket}).Begin(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			var data map[string]json.RawMessage
			if err := json.Unmarshal(asess.Payload(), &data); err != nil {
				t.Fatal(err)
			}
			// The trusted EK, the attacker's AK.
			data["ek_cert"], data["ek_public"] = trustedData["ek_cert"], trustedData["ek_public"]
			payload, _ := json.Marshal(data)
			sess := asess
			if answerer == "trusted" {
				sess = tsess
			}
			_, err = s.Attest(ctx(t), payload, func(c context.Context, ch []byte) ([]byte, error) {
				return sess.Respond(c, ch)
			})
			if err == nil {
				t.Fatal("an AK of another TPM was accepted")
			}
			if !strings.Contains(err.Error(), "activate credential") && !strings.Contains(err.Error(), "EK changed") {
				t.Fatalf("error %v, want the TPM to refuse activation", err)
			}
		})
	}
}

// TestTPMAttestPCRSelectors: with pcr_selection the agent quotes the PCRs
// and the server emits their values as selectors; an extended PCR shows.
func TestTPMAttestPCRSelectors(t *testing.T) {
	tp := swtpm.Shared(t).Start(t)
	hash := ekHash(t, tp)
	tp.ExtendPCR(t, 7, []byte("secure boot policy"))
	s := newServer(t, tpm.ServerConfig{EKHashes: []string{hash}, PCRSelection: []int{16, 0, 7}})
	sel := func(i int) string {
		return "tpm:pcr:sha256:" + strconv.Itoa(i) + ":" + hex.EncodeToString(tp.PCR(t, i))
	}

	res, err := attest(t, s, tp, tamper{})
	wantAccepted(t, res, err, hash, sel(0), sel(7), sel(16))
	before := sel(7)

	tp.ExtendPCR(t, 7, []byte("another bootloader"))
	res, err = attest(t, s, tp, tamper{})
	wantAccepted(t, res, err, hash, sel(0), sel(7), sel(16))
	if sel(7) == before {
		t.Fatal("PCR 7 did not change")
	}
}

// TestTPMAttestPCRAllowed: with pcr_allowed, a PCR value outside the list
// is refused: extending the PCR after a first attestation makes the next
// one fail.
func TestTPMAttestPCRAllowed(t *testing.T) {
	tp := swtpm.Shared(t).Start(t)
	hash := ekHash(t, tp)
	tp.ExtendPCR(t, 7, []byte("known firmware"))
	v7 := hex.EncodeToString(tp.PCR(t, 7))
	s := newServer(t, tpm.ServerConfig{EKHashes: []string{hash}, PCRSelection: []int{7, 16},
		PCRAllowed: []string{"sha256:7:" + strings.Repeat("0", 64), "sha256:7:" + v7}})
	res, err := attest(t, s, tp, tamper{})
	wantAccepted(t, res, err, hash, "tpm:pcr:sha256:7:"+v7, "tpm:pcr:sha256:16:"+hex.EncodeToString(tp.PCR(t, 16)))

	tp.ExtendPCR(t, 7, []byte("unknown bootloader"))
	_, err = attest(t, s, tp, tamper{})
	wantErr(t, err, node.ErrRefused, "PCR 7 of the SHA-256 bank ("+hex.EncodeToString(tp.PCR(t, 7))+") is not one of the values pcr_allowed lists")
	// PCR 16 is not constrained.
	tp.ExtendPCR(t, 16, []byte("debug"))
	tp.Restart(t)
	tp.ExtendPCR(t, 7, []byte("known firmware"))
	_, err = attest(t, s, tp, tamper{})
	if err != nil {
		t.Fatalf("after a reboot into the known firmware: %v", err)
	}
}

// TestTPMAttestQuoteTamperingRefused: a quote over another nonce, other
// PCRs or with values that are not the quoted ones is refused.
func TestTPMAttestQuoteTamperingRefused(t *testing.T) {
	tp := swtpm.Shared(t).Start(t)
	tp.ExtendPCR(t, 7, []byte("x"))
	s := newServer(t, tpm.ServerConfig{EKHashes: []string{ekHash(t, tp)}, PCRSelection: []int{7}})
	editJSON := func(b []byte, f func(m map[string]any)) []byte {
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		f(m)
		out, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	zeros := make([]byte, 32)
	for _, c := range []struct {
		name string
		tm   tamper
		kind error
		text string
	}{
		{"other nonce", tamper{challenge: func(b []byte) []byte {
			return editJSON(b, func(m map[string]any) { m["nonce"] = zeros })
		}}, node.ErrRefused, "not over this attestation's nonce"},
		{"other PCRs", tamper{challenge: func(b []byte) []byte {
			return editJSON(b, func(m map[string]any) { m["pcrs"] = []int{8} })
		}}, node.ErrRefused, "not over the requested PCRs"},
		{"other values", tamper{response: func(b []byte) []byte {
			return editJSON(b, func(m map[string]any) { m["pcr_values"] = [][]byte{zeros} })
		}}, node.ErrRefused, "do not match the quoted digest"},
		{"no quote", tamper{response: func(b []byte) []byte {
			return editJSON(b, func(m map[string]any) { delete(m, "quote") })
		}}, node.ErrInvalid, "quote missing"},
		{"quote of another attestation", tamper{response: func() func([]byte) []byte {
			// A quote and signature from an earlier run of the same TPM
			// (another AK, another nonce).
			var old map[string]any
			_, _ = attest(t, s, tp, tamper{response: func(b []byte) []byte {
				_ = json.Unmarshal(b, &old)
				return b
			}})
			return func(b []byte) []byte {
				return editJSON(b, func(m map[string]any) { m["quote"], m["signature"] = old["quote"], old["signature"] })
			}
		}()}, node.ErrRefused, "bad signature"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := attest(t, s, tp, c.tm)
			wantErr(t, err, c.kind, c.text)
		})
	}
}

// TestTPMAttestInvalidData: malformed attestation data is invalid (and
// never reaches a challenge).
func TestTPMAttestInvalidData(t *testing.T) {
	tp := swtpm.Shared(t).Start(t)
	s := newServer(t, tpm.ServerConfig{EKHashes: []string{ekHash(t, tp)}})
	sess, err := tpm.NewAgent(tpm.AgentConfig{TPMPath: tp.Socket}).Begin(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	var good map[string][]byte
	if err := json.Unmarshal(sess.Payload(), &good); err != nil {
		t.Fatal(err)
	}
	with := func(f func(m map[string][]byte)) []byte {
		m := map[string][]byte{}
		for k, v := range good {
			m[k] = bytes.Clone(v)
		}
		f(m)
		b, _ := json.Marshal(m)
		return b
	}
	other := swtpm.NewImage(t, swtpm.Options{}).Start(t)
	osess, err := tpm.NewAgent(tpm.AgentConfig{TPMPath: other.Socket}).Begin(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	var otherData map[string][]byte
	if err := json.Unmarshal(osess.Payload(), &otherData); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name    string
		payload []byte
		text    string
	}{
		{"empty", nil, "empty"},
		{"not JSON", []byte("tpm"), "decode"},
		{"trailing data", append(bytes.Clone(sess.Payload()), []byte("{}")...), "trailing"},
		{"too large", append(bytes.Clone(sess.Payload()), bytes.Repeat([]byte(" "), tpm.MaxMessageSize)...), "more than"},
		{"no EK", with(func(m map[string][]byte) { delete(m, "ek_public") }), "ek_public missing"},
		{"no AK", with(func(m map[string][]byte) { delete(m, "ak_public") }), "ak_public missing"},
		{"EK truncated", with(func(m map[string][]byte) { m["ek_public"] = m["ek_public"][:40] }), "malformed ek_public"},
		{"EK trailing", with(func(m map[string][]byte) { m["ek_public"] = append(m["ek_public"], 0) }), "malformed ek_public"},
		{"AK garbage", with(func(m map[string][]byte) { m["ak_public"] = bytes.Repeat([]byte{0xff}, 64) }), "malformed ak_public"},
		{"EK as AK", with(func(m map[string][]byte) { m["ak_public"] = m["ek_public"] }), "not a restricted signing key"},
		{"AK as EK", with(func(m map[string][]byte) { m["ek_public"] = m["ak_public"] }), "not a restricted decryption key"},
		{"certificate of another EK", with(func(m map[string][]byte) { m["ek_cert"] = otherData["ek_cert"] }), "not the certificate of ek_public"},
		{"certificate garbage", with(func(m map[string][]byte) { m["ek_cert"] = []byte{0x30, 1, 2} }), "ek_cert"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := s.Attest(ctx(t), c.payload, func(context.Context, []byte) ([]byte, error) {
				t.Fatal("challenged")
				return nil, nil
			})
			wantErr(t, err, node.ErrInvalid, c.text)
			if len(err.Error()) > 300 {
				t.Fatalf("error of %d bytes: %s", len(err.Error()), err)
			}
		})
	}
}

// TestTPMAttestChallengeFailure: an agent that goes away during the
// challenge is a failure, not a refusal.
func TestTPMAttestChallengeFailure(t *testing.T) {
	tp := swtpm.Shared(t).Start(t)
	s := newServer(t, tpm.ServerConfig{EKHashes: []string{ekHash(t, tp)}})
	sess, err := tpm.NewAgent(tpm.AgentConfig{TPMPath: tp.Socket}).Begin(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Attest(ctx(t), sess.Payload(), func(context.Context, []byte) ([]byte, error) {
		return nil, errors.New("stream closed")
	})
	wantErr(t, err, nil, "stream closed")
}

// TestTPMServerConfig: configuration errors name the key.
func TestTPMServerConfig(t *testing.T) {
	empty := t.TempDir()
	notCert := t.TempDir()
	if err := os.WriteFile(filepath.Join(notCert, "x.pem"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := strings.Repeat("ab", 32)
	for _, c := range []struct {
		name string
		cfg  tpm.ServerConfig
		text string
	}{
		{"nothing trusted", tpm.ServerConfig{}, "one of ek_ca_path, ek_hash_path or ek_hashes"},
		{"bad hash", tpm.ServerConfig{EKHashes: []string{"abc"}}, `ek_hashes: "abc"`},
		{"upper-case hash", tpm.ServerConfig{EKHashes: []string{strings.ToUpper(h)}}, "lowercase"},
		{"missing CA dir", tpm.ServerConfig{EKCAPath: filepath.Join(empty, "nope")}, "ek_ca_path"},
		{"empty CA dir", tpm.ServerConfig{EKCAPath: empty}, "holds no certificate"},
		{"CA dir with junk", tpm.ServerConfig{EKCAPath: notCert}, "x.pem"},
		{"missing hash dir", tpm.ServerConfig{EKHashPath: filepath.Join(empty, "nope")}, "ek_hash_path"},
		{"PCR out of range", tpm.ServerConfig{EKHashes: []string{h}, PCRSelection: []int{24}}, "pcr_selection: PCR 24"},
		{"PCR twice", tpm.ServerConfig{EKHashes: []string{h}, PCRSelection: []int{7, 7}}, "listed twice"},
		{"allowed not selected", tpm.ServerConfig{EKHashes: []string{h}, PCRSelection: []int{0}, PCRAllowed: []string{"sha256:7:" + h}}, "PCR 7 is not in pcr_selection"},
		{"allowed malformed", tpm.ServerConfig{EKHashes: []string{h}, PCRSelection: []int{7}, PCRAllowed: []string{"sha1:7:" + h}}, "only the SHA-256 bank"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := tpm.NewServer(td, c.cfg)
			if err == nil || !strings.Contains(err.Error(), c.text) {
				t.Fatalf("NewServer: %v, want an error saying %q", err, c.text)
			}
		})
	}
}

// TestTPMSelectorKinds: the selector kind accepts what the attestor
// produces and refuses what it never can.
func TestTPMSelectorKinds(t *testing.T) {
	r, err := selector.NewRegistry(tpm.SelectorKinds()...)
	if err != nil {
		t.Fatal(err)
	}
	h := strings.Repeat("0f", 32)
	for v, ok := range map[string]bool{
		"pub_hash:" + h:                      true,
		"pcr:sha256:0:" + h:                  true,
		"pcr:sha256:23:" + h:                 true,
		"pub_hash:" + strings.ToUpper(h):     false,
		"pub_hash:" + h[:62]:                 false,
		"pcr:sha256:24:" + h:                 false,
		"pcr:sha256:07:" + h:                 false,
		"pcr:sha1:7:" + h:                    false,
		"pcr:sha256:7:" + h[:40]:             false,
		"pcr:sha256:7":                       false,
		"ek_hash:" + h:                       false,
		"pub_hash:" + h + ":extra":           false,
		"pcr:sha256:-1:" + h:                 false,
		"pcr:sha256:+7:" + h:                 false,
		"pcr:sha256:7:" + strings.ToUpper(h): false,
	} {
		err := r.Check(selector.Selector{Type: "tpm", Value: v})
		if (err == nil) != ok {
			t.Errorf("Check(tpm:%s) = %v, want ok=%v", v, err, ok)
		}
	}
}

func startShared(t *testing.T) *swtpm.TPM {
	t.Helper()
	return swtpm.Shared(t).Start(t)
}

// TestTPMAttestWithoutProvisionedEK: a TPM with no persistent EK and no EK
// certificate attests by its hash (the agent re-creates the EK from the
// TCG template, for the data and again for the challenge); a server
// trusting only manufacturer CAs refuses it, saying there is no
// certificate.
func TestTPMAttestWithoutProvisionedEK(t *testing.T) {
	tp := swtpm.NewImage(t, swtpm.Options{NoEK: true}).Start(t)
	// The hash of the EK the TCG template gives this TPM, computed here
	// with go-tpm directly.
	var hash string
	tp.Do(t, func(t2 transport.TPM) error {
		rsp, err := tpm2.CreatePrimary{
			PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
			InPublic:      tpm2.New2B(tpm2.RSAEKTemplate),
		}.Execute(t2)
		if err != nil {
			return err
		}
		defer tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}.Execute(t2)
		pub, err := rsp.OutPublic.Contents()
		if err != nil {
			return err
		}
		k, err := tpm2.Pub(*pub)
		if err != nil {
			return err
		}
		der, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(der)
		hash = hex.EncodeToString(sum[:])
		return nil
	})
	res, err := attest(t, newServer(t, tpm.ServerConfig{EKHashes: []string{hash}, PCRSelection: []int{7}}), tp, tamper{})
	wantAccepted(t, res, err, hash, "tpm:pcr:sha256:7:"+hex.EncodeToString(tp.PCR(t, 7)))

	im := swtpm.Shared(t)
	_, err = attest(t, newServer(t, tpm.ServerConfig{EKCAPath: caDir(t, im.IssuerCertPath())}), tp, tamper{})
	wantErr(t, err, node.ErrRefused, "sent no EK certificate")
}
