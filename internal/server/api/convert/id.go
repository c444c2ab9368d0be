// Package convert translates between the spire-api-sdk wire types and the
// datastore model, and validates what clients send. Every error names the
// offending field so an API can return it verbatim in a types.Status or a
// gRPC InvalidArgument; it quotes at most a short prefix of what the client
// sent (see clip).
package convert

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/internal/clip"
)

// MaxIDLength bounds a SPIFFE ID's URI form (the SPIFFE spec's 2048 bytes).
const MaxIDLength = 2048

// MaxTrustDomainLength bounds a trust domain name (the SPIFFE ID spec:
// at most 255 bytes).
const MaxTrustDomainLength = 255

// ServerPath is the path of a trust domain's server ID; entries whose parent
// is the server ID are node alias entries.
const ServerPath = "/spire/server"

// ServerID returns spiffe://<td>/spire/server.
func ServerID(td spiffeid.TrustDomain) spiffeid.ID {
	id, err := spiffeid.FromPath(td, ServerPath)
	if err != nil { // cannot happen for a valid trust domain
		panic(fmt.Sprintf("server ID for %q: %v", td, err))
	}
	return id
}

// IDFromProto converts a wire SPIFFE ID. The trust domain must be a name
// ("example.org", lowercase), the path must be empty or a valid SPIFFE path
// (no empty, "." or ".." segments, no trailing slash, no percent-encoding).
// Like SPIRE, a non-empty path without its leading slash gets one.
func IDFromProto(p *types.SPIFFEID) (spiffeid.ID, error) {
	if p == nil {
		return spiffeid.ID{}, errors.New("request must specify SPIFFE ID")
	}
	td, err := TrustDomainFromName(p.TrustDomain)
	if err != nil {
		return spiffeid.ID{}, err
	}
	path := p.Path
	if path != "" && !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	if len("spiffe://")+len(td.Name())+len(path) > MaxIDLength {
		return spiffeid.ID{}, fmt.Errorf("SPIFFE ID is longer than %d bytes", MaxIDLength)
	}
	id, err := spiffeid.FromPath(td, path)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("invalid path %s: %w", clip.Quote(path), err)
	}
	return id, nil
}

// TrustDomainFromName parses a bare trust domain name (at most
// MaxTrustDomainLength bytes).
func TrustDomainFromName(name string) (spiffeid.TrustDomain, error) {
	if name == "" {
		return spiffeid.TrustDomain{}, errors.New("trust domain is missing")
	}
	if strings.Contains(name, ":") || strings.Contains(name, "/") {
		return spiffeid.TrustDomain{}, fmt.Errorf("trust domain %s must be a name such as example.org, not a URI", clip.Quote(name))
	}
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		return spiffeid.TrustDomain{}, fmt.Errorf("trust domain %s: %w", clip.Quote(name), err)
	}
	if err := CheckTrustDomain(td); err != nil {
		return spiffeid.TrustDomain{}, err
	}
	return td, nil
}

// CheckTrustDomain refuses a trust domain name longer than
// MaxTrustDomainLength bytes (go-spiffe does not bound it).
func CheckTrustDomain(td spiffeid.TrustDomain) error {
	if n := len(td.Name()); n > MaxTrustDomainLength {
		return fmt.Errorf("trust domain %s is %d bytes long; the maximum is %d", clip.Quote(td.Name()), n, MaxTrustDomainLength)
	}
	return nil
}

// ParseID parses a SPIFFE ID string from a client: at most MaxIDLength
// bytes, its trust domain at most MaxTrustDomainLength.
func ParseID(s string) (spiffeid.ID, error) {
	if s == "" {
		return spiffeid.ID{}, errors.New("request must specify SPIFFE ID")
	}
	if len(s) > MaxIDLength {
		return spiffeid.ID{}, fmt.Errorf("SPIFFE ID is longer than %d bytes", MaxIDLength)
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%s: %w", clip.Quote(s), err)
	}
	if err := CheckID(id); err != nil {
		return spiffeid.ID{}, err
	}
	return id, nil
}

// CheckID refuses a parsed SPIFFE ID (from a CSR, say) longer than
// MaxIDLength bytes or whose trust domain is longer than
// MaxTrustDomainLength: go-spiffe bounds neither.
func CheckID(id spiffeid.ID) error {
	if len(id.String()) > MaxIDLength {
		return fmt.Errorf("SPIFFE ID is longer than %d bytes", MaxIDLength)
	}
	return CheckTrustDomain(id.TrustDomain())
}

// TrustDomainFromNameOrID parses "example.org" or "spiffe://example.org"
// (the forms SPIRE accepts for federates_with and trust domain arguments).
// A SPIFFE ID with a path is refused.
func TrustDomainFromNameOrID(s string) (spiffeid.TrustDomain, error) {
	if strings.Contains(s, ":/") {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return spiffeid.TrustDomain{}, fmt.Errorf("trust domain %s: %w", clip.Quote(s), err)
		}
		if id.Path() != "" {
			return spiffeid.TrustDomain{}, fmt.Errorf("trust domain %s must not have a path", clip.Quote(s))
		}
		if err := CheckTrustDomain(id.TrustDomain()); err != nil {
			return spiffeid.TrustDomain{}, err
		}
		return id.TrustDomain(), nil
	}
	return TrustDomainFromName(s)
}

// IDToProto converts a SPIFFE ID to its wire form.
func IDToProto(id spiffeid.ID) *types.SPIFFEID {
	return &types.SPIFFEID{TrustDomain: id.TrustDomain().Name(), Path: id.Path()}
}

// IDStringToProto parses a stored SPIFFE ID string into its wire form.
func IDStringToProto(s string) (*types.SPIFFEID, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return nil, fmt.Errorf("stored SPIFFE ID %s: %w", clip.Quote(s), err)
	}
	return IDToProto(id), nil
}

// MemberIDFromProto converts a wire SPIFFE ID that must be a non-root member
// of td (SPIRE's rule for parent IDs and filters by parent).
func MemberIDFromProto(td spiffeid.TrustDomain, p *types.SPIFFEID) (spiffeid.ID, error) {
	id, err := IDFromProto(p)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if err := VerifyMemberID(td, id); err != nil {
		return spiffeid.ID{}, err
	}
	return id, nil
}

// VerifyMemberID checks that id belongs to td and has a path.
func VerifyMemberID(td spiffeid.TrustDomain, id spiffeid.ID) error {
	if !id.MemberOf(td) {
		return fmt.Errorf("%s is not a member of trust domain %q", clip.Quote(id.String()), td)
	}
	if id.Path() == "" {
		return fmt.Errorf("%s is not a member of trust domain %q; path is empty", clip.Quote(id.String()), td)
	}
	return nil
}

// WorkloadIDFromProto converts a wire SPIFFE ID that must be a workload ID
// of td: a member with a path outside the reserved /spire namespace (SPIRE's
// rule for entry SPIFFE IDs).
func WorkloadIDFromProto(td spiffeid.TrustDomain, p *types.SPIFFEID) (spiffeid.ID, error) {
	id, err := IDFromProto(p)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if err := VerifyWorkloadID(td, id); err != nil {
		return spiffeid.ID{}, err
	}
	return id, nil
}

// VerifyWorkloadID checks that id is a member of td outside /spire.
func VerifyWorkloadID(td spiffeid.TrustDomain, id spiffeid.ID) error {
	if !id.MemberOf(td) {
		return fmt.Errorf("%s is not a member of trust domain %q", clip.Quote(id.String()), td)
	}
	if id.Path() == "" {
		return fmt.Errorf("%s is not a workload in trust domain %q; path is empty", clip.Quote(id.String()), td)
	}
	if IsReservedPath(id.Path()) {
		return fmt.Errorf("%s is not a workload in trust domain %q; path is in the reserved namespace", clip.Quote(id.String()), td)
	}
	return nil
}

// IsReservedPath reports whether path is /spire or below it.
func IsReservedPath(path string) bool {
	return path == "/spire" || strings.HasPrefix(path, "/spire/")
}
