package svid

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
)

// Local conversions. TODO(integration): switch to internal/server/api/convert
// once it lands.

func idFromProto(p *types.SPIFFEID) (spiffeid.ID, error) {
	if p == nil {
		return spiffeid.ID{}, errors.New("request must specify SPIFFE ID")
	}
	td, err := spiffeid.TrustDomainFromString(p.GetTrustDomain())
	if err != nil {
		return spiffeid.ID{}, err
	}
	return spiffeid.FromPath(td, p.GetPath())
}

func protoFromID(id spiffeid.ID) *types.SPIFFEID {
	return &types.SPIFFEID{TrustDomain: id.TrustDomain().Name(), Path: id.Path()}
}

func x509SVIDToProto(id spiffeid.ID, chain []*x509.Certificate) *types.X509SVID {
	raw := make([][]byte, 0, len(chain))
	for _, c := range chain {
		raw = append(raw, c.Raw)
	}
	return &types.X509SVID{Id: protoFromID(id), CertChain: raw, ExpiresAt: chain[0].NotAfter.Unix()}
}

// validateDNS checks a DNS SAN: at most 253 bytes, labels of 1-63 letters,
// digits and hyphens not starting or ending with a hyphen; the first label
// may be the wildcard "*".
func validateDNS(name string) error {
	if name == "" || len(name) > 253 {
		return fmt.Errorf("DNS name %q has an invalid length", name)
	}
	for i, label := range strings.Split(name, ".") {
		if i == 0 && label == "*" {
			continue
		}
		if label == "" || len(label) > 63 {
			return fmt.Errorf("DNS name %q has an empty or too long label", name)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("DNS name %q has a label starting or ending with '-'", name)
		}
		for j := 0; j < len(label); j++ {
			c := label[j]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("DNS name %q contains invalid character %q", name, c)
			}
		}
	}
	return nil
}
