package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/sigil-spiffe/sigil/internal/keys"
)

func jwtAlgOrEmpty(t keys.Type) jose.SignatureAlgorithm {
	switch t {
	case keys.ECP256:
		return jose.ES256
	case keys.ECP384:
		return jose.ES384
	case keys.RSA2048, keys.RSA4096:
		return jose.RS256
	}
	return ""
}

func jwtAlgorithm(t keys.Type) (jose.SignatureAlgorithm, error) {
	if a := jwtAlgOrEmpty(t); a != "" {
		return a, nil
	}
	return "", fmt.Errorf("no JWT algorithm for key type %q", t)
}

// newJWTKey wraps signer as a JWT key; the algorithm follows the key's own
// type (a key made before a jwt key type change keeps its algorithm).
func (m *Manager) newJWTKey(keyID, kid string, signer crypto.Signer, notBefore, notAfter time.Time) (*jwtKey, error) {
	t, err := keys.TypeOf(signer.Public())
	if err != nil {
		return nil, fmt.Errorf("JWT key: %w", err)
	}
	alg, err := jwtAlgorithm(t)
	if err != nil {
		return nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		return nil, fmt.Errorf("marshal JWT public key: %w", err)
	}
	var key any
	switch s := signer.(type) {
	case *ecdsa.PrivateKey, *rsa.PrivateKey:
		key = jose.JSONWebKey{Key: s, KeyID: kid}
	default:
		key = &opaqueSigner{signer: signer, alg: alg, kid: kid}
	}
	js, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("JWT signer: %w", err)
	}
	return &jwtKey{keyID: keyID, kid: kid, signer: signer, jose: js, pubDER: pubDER, notBefore: notBefore, notAfter: notAfter}, nil
}

// SignJWTSVID signs a JWT-SVID: header alg, kid (published in the bundle)
// and typ JWT; claims sub, aud, exp (capped to the key's expiry), iat and,
// when configured, iss.
func (m *Manager) SignJWTSVID(ctx context.Context, p JWTSVIDParams) (string, error) {
	now := m.clk.Now()
	m.mu.RLock()
	k := m.jwts.active
	m.mu.RUnlock()
	if k == nil {
		return "", errors.New("ca: no active JWT key (Init not called or failed)")
	}
	if !now.Before(k.notAfter) {
		return "", fmt.Errorf("ca: active JWT key expired at %s", k.notAfter.Format(time.RFC3339))
	}
	if err := m.checkWorkloadID(p.SPIFFEID); err != nil {
		return "", fmt.Errorf("ca: sign JWT-SVID: %w", err)
	}
	if len(p.Audience) == 0 {
		return "", errors.New("ca: sign JWT-SVID: at least one audience is required")
	}
	for _, a := range p.Audience {
		if a == "" {
			return "", errors.New("ca: sign JWT-SVID: empty audience")
		}
	}
	ttl := p.TTL
	if ttl < 0 {
		return "", fmt.Errorf("ca: sign JWT-SVID: negative TTL %s", ttl)
	}
	if ttl == 0 {
		ttl = m.cfg.JWTSVIDTTL
	}
	exp := now.Add(ttl)
	if exp.After(k.notAfter) {
		m.log.Debug("JWT-SVID lifetime capped to the signing key's expiry", "spiffe_id", p.SPIFFEID.String(), "requested_ttl", ttl, "ttl", k.notAfter.Sub(now))
		exp = k.notAfter
	}
	claims := jwt.Claims{
		Subject:  p.SPIFFEID.String(),
		Issuer:   m.cfg.JWTIssuer,
		Expiry:   jwt.NewNumericDate(exp),
		IssuedAt: jwt.NewNumericDate(now),
	}
	// "aud" is always a JSON list, also for one audience, as spire-server
	// writes it (jwt.Audience would write a lone audience as a string,
	// which RFC 7519 allows but some verifiers do not expect).
	aud := map[string]any{"aud": append([]string(nil), p.Audience...)}
	tok, err := jwt.Signed(k.jose).Claims(claims).Claims(aud).Serialize()
	if err != nil {
		return "", fmt.Errorf("ca: sign JWT-SVID for %s: %w", p.SPIFFEID, err)
	}
	return tok, nil
}

// opaqueSigner adapts a generic crypto.Signer (e.g. a hardware key) to
// go-jose, converting ECDSA signatures from ASN.1 to the JWS r||s form.
type opaqueSigner struct {
	signer crypto.Signer
	alg    jose.SignatureAlgorithm
	kid    string
}

func (o *opaqueSigner) Public() *jose.JSONWebKey {
	return &jose.JSONWebKey{Key: o.signer.Public(), KeyID: o.kid, Algorithm: string(o.alg)}
}

func (o *opaqueSigner) Algs() []jose.SignatureAlgorithm { return []jose.SignatureAlgorithm{o.alg} }

func (o *opaqueSigner) SignPayload(payload []byte, alg jose.SignatureAlgorithm) ([]byte, error) {
	var h crypto.Hash
	switch alg {
	case jose.ES256, jose.RS256:
		h = crypto.SHA256
	case jose.ES384:
		h = crypto.SHA384
	default:
		return nil, fmt.Errorf("unsupported algorithm %s", alg)
	}
	hh := h.New()
	hh.Write(payload)
	sig, err := o.signer.Sign(rand.Reader, hh.Sum(nil), h)
	if err != nil {
		return nil, err
	}
	pub, ok := o.signer.Public().(*ecdsa.PublicKey)
	if !ok {
		return sig, nil
	}
	var rs struct{ R, S *big.Int }
	if rest, err := asn1.Unmarshal(sig, &rs); err != nil || len(rest) != 0 {
		return nil, errors.New("malformed ECDSA signature")
	}
	size := (pub.Curve.Params().BitSize + 7) / 8
	out := make([]byte, 2*size)
	rs.R.FillBytes(out[:size])
	rs.S.FillBytes(out[size:])
	return out, nil
}
