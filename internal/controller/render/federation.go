package render

import (
	"errors"
	"fmt"
	"net/url"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/controller/api/v1alpha1"
)

// Bundle endpoint profiles.
const (
	ProfileHTTPSSPIFFE = "https_spiffe"
	ProfileHTTPSWeb    = "https_web"
)

// Federation is a federation relationship as a ClusterFederatedTrustDomain
// declares it.
type Federation struct {
	TrustDomain       spiffeid.TrustDomain
	BundleEndpointURL string
	Profile           string
	EndpointSPIFFEID  spiffeid.ID          // https_spiffe only
	Bundle            *spiffebundle.Bundle // optional
}

// FederatedTrustDomain parses and checks a ClusterFederatedTrustDomain's
// spec.
func FederatedTrustDomain(in *v1alpha1.ClusterFederatedTrustDomainSpec) (*Federation, error) {
	td, err := spiffeid.TrustDomainFromString(in.TrustDomain)
	if err != nil {
		return nil, fieldErr("spec.trustDomain", err)
	}
	u, err := url.Parse(in.BundleEndpointURL)
	switch {
	case err != nil:
		return nil, fieldErr("spec.bundleEndpointURL", err)
	case u.Scheme != "https":
		return nil, fieldErr("spec.bundleEndpointURL", fmt.Errorf("scheme must be https, not %q", clip(u.Scheme)))
	case u.User != nil:
		return nil, fieldErr("spec.bundleEndpointURL", errors.New("must not contain user info"))
	case u.Host == "":
		return nil, fieldErr("spec.bundleEndpointURL", errors.New("no host"))
	}
	f := &Federation{TrustDomain: td, BundleEndpointURL: in.BundleEndpointURL, Profile: in.BundleEndpointProfile.Type}
	switch f.Profile {
	case ProfileHTTPSSPIFFE:
		if f.EndpointSPIFFEID, err = spiffeid.FromString(in.BundleEndpointProfile.EndpointSPIFFEID); err != nil {
			return nil, fieldErr("spec.bundleEndpointProfile.endpointSPIFFEID", err)
		}
	case ProfileHTTPSWeb:
		if in.BundleEndpointProfile.EndpointSPIFFEID != "" {
			return nil, fieldErr("spec.bundleEndpointProfile.endpointSPIFFEID", errors.New("only for the https_spiffe profile"))
		}
	default:
		return nil, fieldErr("spec.bundleEndpointProfile.type", fmt.Errorf("%q: want https_spiffe or https_web", clip(f.Profile)))
	}
	if in.TrustDomainBundle != "" {
		if f.Bundle, err = spiffebundle.Parse(td, []byte(in.TrustDomainBundle)); err != nil {
			return nil, fieldErr("spec.trustDomainBundle", err)
		}
	}
	return f, nil
}
