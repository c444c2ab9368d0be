package convert

import (
	"crypto/x509"
	"errors"
	"fmt"
	"slices"

	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/datastore"
)

// MaxSequenceNumber is the largest bundle sequence number stored (2^63-1,
// SQL's signed 64-bit integers).
const MaxSequenceNumber = 1<<63 - 1

// BundleToProto converts a stored bundle to its wire form (all fields).
func BundleToProto(b *datastore.Bundle) *types.Bundle {
	if b == nil {
		return nil
	}
	out := &types.Bundle{
		TrustDomain:    b.TrustDomain,
		RefreshHint:    b.RefreshHint,
		SequenceNumber: b.SequenceNumber,
	}
	for _, a := range b.X509Authorities {
		out.X509Authorities = append(out.X509Authorities, &types.X509Certificate{
			Asn1: slices.Clone(a.ASN1), Tainted: a.Tainted,
		})
	}
	out.JwtAuthorities = JWTKeysToProto(b.JWTKeys)
	return out
}

// JWTKeysToProto converts JWT keys to their wire form.
func JWTKeysToProto(keys []datastore.JWTKey) []*types.JWTKey {
	var out []*types.JWTKey
	for _, k := range keys {
		out = append(out, &types.JWTKey{
			PublicKey: slices.Clone(k.PublicKey),
			KeyId:     k.KeyID,
			ExpiresAt: k.ExpiresAt,
			Tainted:   k.Tainted,
		})
	}
	return out
}

// ApplyBundleMask clears every field the mask does not select (nil mask =
// everything). The trust domain is always kept.
func ApplyBundleMask(b *types.Bundle, mask *types.BundleMask) {
	if mask == nil || b == nil {
		return
	}
	if !mask.X509Authorities {
		b.X509Authorities = nil
	}
	if !mask.JwtAuthorities {
		b.JwtAuthorities = nil
	}
	if !mask.RefreshHint {
		b.RefreshHint = 0
	}
	if !mask.SequenceNumber {
		b.SequenceNumber = 0
	}
	if !mask.WitAuthorities {
		b.WitAuthorities = nil
	}
}

// BundleFromProto converts and validates a wire bundle: the trust domain
// name (at most MaxTrustDomainLength bytes), the sequence number (at most
// MaxSequenceNumber), every X.509 authority (a parsable DER certificate)
// and every JWT authority (key ID set, PKIX public key parsable).
func BundleFromProto(b *types.Bundle) (*datastore.Bundle, error) {
	if b == nil {
		return nil, errors.New("missing bundle")
	}
	td, err := TrustDomainFromNameOrID(b.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("invalid trust domain: %w", err)
	}
	if b.RefreshHint < 0 {
		return nil, fmt.Errorf("invalid refresh hint %d: must not be negative", b.RefreshHint)
	}
	if b.SequenceNumber > MaxSequenceNumber {
		return nil, fmt.Errorf("invalid sequence number %d: the maximum is %d", b.SequenceNumber, MaxSequenceNumber)
	}
	x509s, err := X509AuthoritiesFromProto(b.X509Authorities)
	if err != nil {
		return nil, err
	}
	jwts, err := JWTKeysFromProto(b.JwtAuthorities)
	if err != nil {
		return nil, err
	}
	return &datastore.Bundle{
		TrustDomain:     td.Name(),
		X509Authorities: x509s,
		JWTKeys:         jwts,
		RefreshHint:     b.RefreshHint,
		SequenceNumber:  b.SequenceNumber,
	}, nil
}

// X509AuthoritiesFromProto validates and converts X.509 authorities.
func X509AuthoritiesFromProto(in []*types.X509Certificate) ([]datastore.X509Authority, error) {
	var out []datastore.X509Authority
	for i, a := range in {
		if a == nil || len(a.Asn1) == 0 {
			return nil, fmt.Errorf("invalid X.509 authority %d: missing certificate", i)
		}
		if _, err := x509.ParseCertificate(a.Asn1); err != nil {
			return nil, fmt.Errorf("invalid X.509 authority %d: %w", i, err)
		}
		out = append(out, datastore.X509Authority{ASN1: slices.Clone(a.Asn1), Tainted: a.Tainted})
	}
	return out, nil
}

// JWTKeysFromProto validates and converts JWT authorities.
func JWTKeysFromProto(in []*types.JWTKey) ([]datastore.JWTKey, error) {
	var out []datastore.JWTKey
	for i, k := range in {
		key, err := JWTKeyFromProto(k)
		if err != nil {
			return nil, fmt.Errorf("invalid JWT authority %d: %w", i, err)
		}
		out = append(out, key)
	}
	return out, nil
}

// JWTKeyFromProto validates and converts one JWT authority.
func JWTKeyFromProto(k *types.JWTKey) (datastore.JWTKey, error) {
	if k == nil {
		return datastore.JWTKey{}, errors.New("missing JWT key")
	}
	if k.KeyId == "" {
		return datastore.JWTKey{}, errors.New("missing key ID")
	}
	if len(k.PublicKey) == 0 {
		return datastore.JWTKey{}, fmt.Errorf("key %s: missing public key", clip.Quote(k.KeyId))
	}
	if _, err := x509.ParsePKIXPublicKey(k.PublicKey); err != nil {
		return datastore.JWTKey{}, fmt.Errorf("key %s: unable to parse public key: %w", clip.Quote(k.KeyId), err)
	}
	return datastore.JWTKey{
		KeyID:     k.KeyId,
		PublicKey: slices.Clone(k.PublicKey),
		ExpiresAt: k.ExpiresAt,
		Tainted:   k.Tainted,
	}, nil
}
