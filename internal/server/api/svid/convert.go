package svid

import (
	"crypto/x509"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/internal/server/api/convert"
)

func x509SVIDToProto(id spiffeid.ID, chain []*x509.Certificate) *types.X509SVID {
	raw := make([][]byte, 0, len(chain))
	for _, c := range chain {
		raw = append(raw, c.Raw)
	}
	return &types.X509SVID{Id: convert.IDToProto(id), CertChain: raw, ExpiresAt: chain[0].NotAfter.Unix()}
}
