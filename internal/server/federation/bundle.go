package federation

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/datastore"
)

// toSPIFFE converts a stored bundle into go-spiffe's form, with its
// sequence number and refresh hint (when set).
func toSPIFFE(td spiffeid.TrustDomain, b *datastore.Bundle) (*spiffebundle.Bundle, error) {
	out := spiffebundle.New(td)
	for i, a := range b.X509Authorities {
		cert, err := x509.ParseCertificate(a.ASN1)
		if err != nil {
			return nil, fmt.Errorf("bundle of %s: X.509 authority %d: %w", td.Name(), i, err)
		}
		out.AddX509Authority(cert)
	}
	for _, k := range b.JWTKeys {
		pub, err := x509.ParsePKIXPublicKey(k.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("bundle of %s: JWT authority %q: %w", td.Name(), k.KeyID, err)
		}
		if err := out.AddJWTAuthority(k.KeyID, pub); err != nil {
			return nil, fmt.Errorf("bundle of %s: JWT authority %q: %w", td.Name(), k.KeyID, err)
		}
	}
	if b.RefreshHint > 0 {
		out.SetRefreshHint(time.Duration(b.RefreshHint) * time.Second)
	}
	out.SetSequenceNumber(b.SequenceNumber)
	return out, nil
}

// fromSPIFFE converts a fetched bundle into its stored form: authorities
// in the order served, JWT keys by key ID, the refresh hint in whole
// seconds and the publisher's sequence number (the store keeps its own
// when that is higher).
func fromSPIFFE(b *spiffebundle.Bundle) (*datastore.Bundle, error) {
	out := &datastore.Bundle{TrustDomain: b.TrustDomain().Name()}
	for _, c := range b.X509Authorities() {
		out.X509Authorities = append(out.X509Authorities, datastore.X509Authority{ASN1: c.Raw})
	}
	keys := b.JWTAuthorities()
	kids := make([]string, 0, len(keys))
	for kid := range keys {
		kids = append(kids, kid)
	}
	slices.Sort(kids)
	for _, kid := range kids {
		der, err := x509.MarshalPKIXPublicKey(keys[kid])
		if err != nil {
			return nil, fmt.Errorf("JWT authority %q: %w", kid, err)
		}
		out.JWTKeys = append(out.JWTKeys, datastore.JWTKey{KeyID: kid, PublicKey: der})
	}
	if h, ok := b.RefreshHint(); ok && h > 0 {
		out.RefreshHint = int64((h + time.Second - 1) / time.Second)
	}
	if seq, ok := b.SequenceNumber(); ok {
		out.SequenceNumber = seq
	}
	return out, nil
}

// sameContent reports whether two bundles hold the same X.509 authorities
// and JWT keys (as sets) and refresh hint. Sequence numbers and taint
// marks are not compared: the store numbers its own writes.
func sameContent(a, b *datastore.Bundle) bool {
	if a.RefreshHint != b.RefreshHint || len(a.X509Authorities) != len(b.X509Authorities) || len(a.JWTKeys) != len(b.JWTKeys) {
		return false
	}
	for _, x := range a.X509Authorities {
		if !slices.ContainsFunc(b.X509Authorities, func(y datastore.X509Authority) bool { return bytes.Equal(x.ASN1, y.ASN1) }) {
			return false
		}
	}
	for _, k := range a.JWTKeys {
		if !slices.ContainsFunc(b.JWTKeys, func(l datastore.JWTKey) bool { return k.KeyID == l.KeyID && bytes.Equal(k.PublicKey, l.PublicKey) }) {
			return false
		}
	}
	return true
}
