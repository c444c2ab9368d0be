package tpm_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/sigil-spiffe/sigil/internal/attest/node"
	"github.com/sigil-spiffe/sigil/internal/attest/node/tpm"
)

// softwareKeys returns well-formed EK and AK public areas (keys made in
// software: no TPM can answer for them) and the EK's hash.
func softwareKeys(f *testing.F) (ek, ak []byte, hash string) {
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		f.Fatal(err)
	}
	ekPub := tpm2.RSAEKTemplate
	ekPub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: rk.N.Bytes()})
	ek = tpm2.Marshal(ekPub)
	hash, err = tpm.PubHash(&rk.PublicKey)
	if err != nil {
		f.Fatal(err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	akPub := tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true,
			UserWithAuth: true, Restricted: true, SignEncrypt: true},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Scheme: tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})},
			CurveID: tpm2.TPMECCNistP256,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: ec.X.FillBytes(make([]byte, 32))},
			Y: tpm2.TPM2BECCParameter{Buffer: ec.Y.FillBytes(make([]byte, 32))},
		}),
	}
	return ek, tpm2.Marshal(akPub), hash
}

// FuzzTPMAttest: whatever the agent sends (attestation data, then a
// response to the challenge), the server answers with an error that is a
// precise refusal (ErrInvalid or ErrRefused), never accepts, never panics,
// and keeps its error short.
func FuzzTPMAttest(f *testing.F) {
	ek, ak, hash := softwareKeys(f)
	good, _ := json.Marshal(map[string][]byte{"ek_public": ek, "ak_public": ak})
	f.Add(good, []byte(`{"secret":"AAAA"}`))
	f.Add(good, []byte(`{"secret":"AAAA","quote":"AAAA","signature":"AAAA","pcr_values":["AAAA"]}`))
	f.Add([]byte(`{"ek_public":"AAAA","ak_public":"AAAA"}`), []byte(`{}`))
	f.Add([]byte(`{"ek_cert":"MIIB","ek_public":"AAAA","ak_public":"AAAA"}`), []byte(`null`))
	f.Add([]byte(`[]`), []byte(``))
	s, err := tpm.NewServer(td, tpm.ServerConfig{EKHashes: []string{hash}, PCRSelection: []int{0, 7}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, payload, answer []byte) {
		res, err := s.Attest(context.Background(), payload, func(context.Context, []byte) ([]byte, error) {
			return answer, nil
		})
		if err == nil {
			t.Fatalf("accepted: %+v", res)
		}
		if !errors.Is(err, node.ErrInvalid) && !errors.Is(err, node.ErrRefused) {
			t.Fatalf("error %v is neither ErrInvalid nor ErrRefused", err)
		}
		if len(err.Error()) > 400 {
			t.Fatalf("error of %d bytes", len(err.Error()))
		}
	})
}

// TestTPMAgentRefusesBadChallenge: the agent half checks a challenge
// before it reaches the TPM.
func TestTPMAgentRefusesBadChallenge(t *testing.T) {
	tp := startShared(t)
	for name, ch := range map[string]string{
		"not JSON":         `x`,
		"no blob":          `{"encrypted_secret":"AAAA"}`,
		"PCRs no nonce":    `{"credential_blob":"AAAA","encrypted_secret":"AAAA","pcrs":[7]}`,
		"PCR out of range": `{"credential_blob":"AAAA","encrypted_secret":"AAAA","nonce":"AAAA","pcrs":[24]}`,
		"PCRs unordered":   `{"credential_blob":"AAAA","encrypted_secret":"AAAA","nonce":"AAAA","pcrs":[7,0]}`,
	} {
		t.Run(name, func(t *testing.T) {
			sess, err := tpm.NewAgent(tpm.AgentConfig{TPMPath: tp.Socket}).Begin(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := sess.Respond(ctx(t), []byte(ch)); err == nil {
				t.Fatal("Respond accepted the challenge")
			}
		})
	}
}
