package client

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// ErrBundleNotFound is returned by GetFederatedBundle when the server has no
// bundle for the trust domain.
var ErrBundleNotFound = errors.New("bundle not found")

// GetBundle returns the bundle of the agent's own trust domain and the
// authorities in it the server marks tainted.
func (c *Client) GetBundle(ctx context.Context) (*spiffebundle.Bundle, Taints, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	b, err := c.bundle.GetBundle(ctx, &bundlev1.GetBundleRequest{})
	if err != nil {
		return nil, Taints{}, fmt.Errorf("get bundle: %w", err)
	}
	out, err := BundleFromProto(b)
	if err != nil {
		return nil, Taints{}, fmt.Errorf("get bundle: %w", err)
	}
	if out.TrustDomain() != c.cfg.TrustDomain {
		return nil, Taints{}, fmt.Errorf("get bundle: server returned the bundle of %q, want %q", out.TrustDomain(), c.cfg.TrustDomain)
	}
	return out, TaintsFromProto(b), nil
}

// Taints are the authorities of a bundle its server marks tainted
// (tainted_key: SPIRE's "localauthority … taint", the step before the
// authority is revoked and removed): agents move the SVIDs they hold off
// them, as SPIRE's agent does. Tainted authorities stay trusted until
// they are removed from the bundle.
type Taints struct {
	X509 []*x509.Certificate
	// JWT holds the key IDs of tainted JWT authorities.
	JWT map[string]struct{}
}

// Empty reports whether no authority is tainted.
func (t Taints) Empty() bool { return len(t.X509) == 0 && len(t.JWT) == 0 }

// TaintsFromProto returns the tainted authorities of b, skipping those
// that do not parse (BundleFromProto refuses them).
func TaintsFromProto(b *types.Bundle) Taints {
	var t Taints
	for _, a := range b.GetX509Authorities() {
		if !a.GetTainted() {
			continue
		}
		if cert, err := x509.ParseCertificate(a.GetAsn1()); err == nil {
			t.X509 = append(t.X509, cert)
		}
	}
	for _, k := range b.GetJwtAuthorities() {
		if k.GetTainted() && k.GetKeyId() != "" {
			if t.JWT == nil {
				t.JWT = make(map[string]struct{})
			}
			t.JWT[k.GetKeyId()] = struct{}{}
		}
	}
	return t
}

// RefreshedAtHeader is the GetFederatedBundle response header in which
// sigil-server says when it last fetched the bundle from its trust
// domain's bundle endpoint (Unix seconds; see the server's
// internal/server/api/bundle package documentation). SPIRE servers do not
// send it.
const RefreshedAtHeader = "sigil-bundle-refreshed-at"

// GetFederatedBundle returns the bundle of a federated trust domain, or an
// error wrapping ErrBundleNotFound, and when the server last fetched it
// from that trust domain (RefreshedAtHeader): zero when the server does
// not say (a bundle set by hand, a SPIRE server) or says something that is
// not a positive Unix time.
func (c *Client) GetFederatedBundle(ctx context.Context, td spiffeid.TrustDomain) (*spiffebundle.Bundle, time.Time, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	var md metadata.MD
	b, err := c.bundle.GetFederatedBundle(ctx, &bundlev1.GetFederatedBundleRequest{TrustDomain: td.Name()}, grpc.Header(&md))
	if status.Code(err) == codes.NotFound {
		return nil, time.Time{}, fmt.Errorf("get federated bundle %q: %w", td, ErrBundleNotFound)
	}
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("get federated bundle %q: %w", td, err)
	}
	out, err := BundleFromProto(b)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("get federated bundle %q: %w", td, err)
	}
	if out.TrustDomain() != td {
		return nil, time.Time{}, fmt.Errorf("get federated bundle: server returned the bundle of %q, want %q", out.TrustDomain(), td)
	}
	return out, refreshedAt(md), nil
}

// refreshedAt reads RefreshedAtHeader; zero when absent or malformed.
func refreshedAt(md metadata.MD) time.Time {
	v := md.Get(RefreshedAtHeader)
	if len(v) != 1 {
		return time.Time{}
	}
	secs, err := strconv.ParseInt(v[0], 10, 64)
	if err != nil || secs <= 0 {
		return time.Time{}
	}
	return time.Unix(secs, 0)
}

// BundleFromProto validates and converts a bundle message. Tainted
// authorities are kept (they are still trusted until removed).
func BundleFromProto(b *types.Bundle) (*spiffebundle.Bundle, error) {
	if b == nil {
		return nil, errors.New("empty bundle")
	}
	td, err := spiffeid.TrustDomainFromString(b.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("bundle trust domain: %w", err)
	}
	out := spiffebundle.New(td)
	for i, a := range b.X509Authorities {
		cert, err := x509.ParseCertificate(a.GetAsn1())
		if err != nil {
			return nil, fmt.Errorf("bundle %q: X.509 authority %d: %w", td, i, err)
		}
		out.AddX509Authority(cert)
	}
	for _, k := range b.JwtAuthorities {
		if k.GetKeyId() == "" {
			return nil, fmt.Errorf("bundle %q: JWT authority without a key ID", td)
		}
		pub, err := x509.ParsePKIXPublicKey(k.GetPublicKey())
		if err != nil {
			return nil, fmt.Errorf("bundle %q: JWT authority %q: %w", td, k.GetKeyId(), err)
		}
		if err := out.AddJWTAuthority(k.GetKeyId(), pub); err != nil {
			return nil, fmt.Errorf("bundle %q: JWT authority %q: %w", td, k.GetKeyId(), err)
		}
	}
	if b.RefreshHint > 0 {
		out.SetRefreshHint(time.Duration(b.RefreshHint) * time.Second)
	}
	out.SetSequenceNumber(b.SequenceNumber)
	return out, nil
}
