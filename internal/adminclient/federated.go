package adminclient

import (
	"context"
	"crypto/x509"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
)

// BundleProto is b in the API's form: its X.509 and JWT authorities,
// refresh hint (seconds) and sequence number.
func BundleProto(b *spiffebundle.Bundle) (*types.Bundle, error) {
	out := &types.Bundle{TrustDomain: b.TrustDomain().Name()}
	for _, c := range b.X509Authorities() {
		out.X509Authorities = append(out.X509Authorities, &types.X509Certificate{Asn1: c.Raw})
	}
	for kid, pub := range b.JWTAuthorities() {
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return nil, fmt.Errorf("bundle of %s: JWT authority: %w", b.TrustDomain(), err)
		}
		out.JwtAuthorities = append(out.JwtAuthorities, &types.JWTKey{KeyId: kid, PublicKey: der})
	}
	if h, ok := b.RefreshHint(); ok {
		out.RefreshHint = int64(h.Seconds())
	}
	if n, ok := b.SequenceNumber(); ok {
		out.SequenceNumber = n
	}
	return out, nil
}

// SetFederatedBundle creates or replaces the bundle of a federated trust
// domain (bundle set).
func (c *Client) SetFederatedBundle(ctx context.Context, b *spiffebundle.Bundle) error {
	pb, err := BundleProto(b)
	if err != nil {
		return err
	}
	resp, err := c.Bundle.BatchSetFederatedBundle(ctx, &bundlev1.BatchSetFederatedBundleRequest{Bundle: []*types.Bundle{pb}})
	if err != nil {
		return fmt.Errorf("set federated bundle %s: %w", b.TrustDomain(), err)
	}
	if rs := resp.GetResults(); len(rs) != 1 {
		return fmt.Errorf("set federated bundle %s: %d results", b.TrustDomain(), len(rs))
	}
	if err := resultErr(resp.GetResults()[0].GetStatus()); err != nil {
		return fmt.Errorf("set federated bundle %s: %w", b.TrustDomain(), err)
	}
	return nil
}
