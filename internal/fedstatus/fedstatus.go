// Package fedstatus is how sigil-server tells its CLI the refresh status of
// its federation relationships without changing the trustdomain/v1 wire
// messages: a Sigil extension carried in gRPC trailer metadata of
// ListFederationRelationships and GetFederationRelationship (ignored by
// SPIRE's CLI and other clients), one JSON Status per value.
//
// The trailer also carries the relationships of the server configuration
// (federates_with), which the API's messages, as SPIRE's, do not list.
package fedstatus

import (
	"encoding/json"
	"fmt"
	"time"

	"google.golang.org/grpc/metadata"
)

// Key is the trailer key (binary metadata: any bytes, base64 on the wire).
const Key = "sigil-federation-status-bin"

// Sources of a relationship.
const (
	SourceConfig    = "configuration"
	SourceDatastore = "datastore"
)

// Status is one relationship's refresh status.
type Status struct {
	TrustDomain       string `json:"trust_domain"`
	Source            string `json:"source"`
	BundleEndpointURL string `json:"bundle_endpoint_url"`
	Profile           string `json:"bundle_endpoint_profile"`
	EndpointSPIFFEID  string `json:"endpoint_spiffe_id,omitempty"`
	// OverridesStored is set on a configuration relationship when the
	// datastore has one for the same trust domain (the configuration's is
	// the one used).
	OverridesStored     bool      `json:"overrides_stored,omitempty"`
	LastAttempt         time.Time `json:"last_attempt,omitzero"`
	LastSuccess         time.Time `json:"last_success,omitzero"`
	LastError           string    `json:"last_error,omitempty"`
	LastErrorAt         time.Time `json:"last_error_at,omitzero"`
	ConsecutiveFailures int       `json:"consecutive_failures"`
	FailingSince        time.Time `json:"failing_since,omitzero"`
	NextAttempt         time.Time `json:"next_attempt,omitzero"`
	// RefreshIntervalSeconds is the interval in use (the peer's refresh
	// hint, bounded).
	RefreshIntervalSeconds int64 `json:"refresh_interval_seconds,omitempty"`
	// BundleAgeSeconds is how long ago the bundle was last fetched from its
	// endpoint (absent: never).
	BundleAgeSeconds *int64 `json:"bundle_age_seconds,omitempty"`
	// Now is the server's time when the status was taken.
	Now time.Time `json:"now"`
}

// Append adds statuses to md.
func Append(md metadata.MD, ss ...Status) (metadata.MD, error) {
	if md == nil {
		md = metadata.MD{}
	}
	for _, s := range ss {
		b, err := json.Marshal(s)
		if err != nil {
			return nil, fmt.Errorf("encode federation status: %w", err)
		}
		md.Append(Key, string(b))
	}
	return md, nil
}

// FromMD decodes the statuses in md; values that do not decode are
// skipped.
func FromMD(md metadata.MD) []Status {
	var out []Status
	for _, v := range md.Get(Key) {
		var s Status
		if json.Unmarshal([]byte(v), &s) == nil && s.TrustDomain != "" {
			out = append(out, s)
		}
	}
	return out
}
