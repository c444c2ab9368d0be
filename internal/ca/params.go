package ca

import (
	"crypto"
	"crypto/x509/pkix"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// X509SVIDParams asks the CA for an X509-SVID.
type X509SVIDParams struct {
	SPIFFEID  spiffeid.ID
	PublicKey crypto.PublicKey
	// TTL 0 means the configured default_x509_svid_ttl. The result never
	// outlives the signing CA certificate.
	TTL      time.Duration
	DNSNames []string // first one also becomes the subject CN
	Subject  pkix.Name
}

// JWTSVIDParams asks the CA for a JWT-SVID.
type JWTSVIDParams struct {
	SPIFFEID spiffeid.ID
	Audience []string // at least one
	TTL      time.Duration
}

// DownstreamX509CAParams asks the CA for an intermediate CA certificate for a
// downstream (nested) server.
type DownstreamX509CAParams struct {
	PublicKey crypto.PublicKey
	TTL       time.Duration // 0 = ca_ttl
}
