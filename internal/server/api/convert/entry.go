package convert

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

const (
	// MaxHintLength is SPIRE's limit on an entry hint.
	MaxHintLength = 1024
	// MaxEntryIDLength bounds a caller-chosen entry ID.
	MaxEntryIDLength = 255
	maxDNSNameLength = 253
	maxDNSLabel      = 63
)

// AllEntryFields is the mask with every field set (a nil mask means this).
var AllEntryFields = &types.EntryMask{
	SpiffeId: true, ParentId: true, Selectors: true, X509SvidTtl: true,
	FederatesWith: true, Admin: true, Downstream: true, ExpiresAt: true,
	DnsNames: true, RevisionNumber: true, StoreSvid: true, JwtSvidTtl: true,
	Hint: true, CreatedAt: true, AdditionalAttributes: true,
}

// EntryToProto converts a stored entry to its wire form (all fields).
func EntryToProto(e *datastore.Entry) (*types.Entry, error) {
	if e == nil {
		return nil, errors.New("missing entry")
	}
	id, err := IDStringToProto(e.SPIFFEID)
	if err != nil {
		return nil, fmt.Errorf("entry %q: invalid SPIFFE ID: %w", e.ID, err)
	}
	parent, err := IDStringToProto(e.ParentID)
	if err != nil {
		return nil, fmt.Errorf("entry %q: invalid parent ID: %w", e.ID, err)
	}
	return &types.Entry{
		Id:             e.ID,
		SpiffeId:       id,
		ParentId:       parent,
		Selectors:      SelectorsToProto(e.Selectors),
		X509SvidTtl:    e.X509SVIDTTL,
		JwtSvidTtl:     e.JWTSVIDTTL,
		FederatesWith:  slices.Clone(e.FederatesWith),
		Admin:          e.Admin,
		Downstream:     e.Downstream,
		ExpiresAt:      e.ExpiresAt,
		DnsNames:       slices.Clone(e.DNSNames),
		RevisionNumber: e.RevisionNumber,
		StoreSvid:      e.StoreSVID,
		Hint:           e.Hint,
		CreatedAt:      e.CreatedAt,
	}, nil
}

// EntryToProtoMasked converts and then clears the fields the mask leaves
// out (nil mask = everything). The ID is always kept.
func EntryToProtoMasked(e *datastore.Entry, mask *types.EntryMask) (*types.Entry, error) {
	pe, err := EntryToProto(e)
	if err != nil {
		return nil, err
	}
	ApplyEntryMask(pe, mask)
	return pe, nil
}

// ApplyEntryMask clears every field of e the mask does not select. A nil
// mask selects everything. The ID is always kept.
func ApplyEntryMask(e *types.Entry, mask *types.EntryMask) {
	if mask == nil || e == nil {
		return
	}
	if !mask.SpiffeId {
		e.SpiffeId = nil
	}
	if !mask.ParentId {
		e.ParentId = nil
	}
	if !mask.Selectors {
		e.Selectors = nil
	}
	if !mask.X509SvidTtl {
		e.X509SvidTtl = 0
	}
	if !mask.JwtSvidTtl {
		e.JwtSvidTtl = 0
	}
	if !mask.FederatesWith {
		e.FederatesWith = nil
	}
	if !mask.Admin {
		e.Admin = false
	}
	if !mask.Downstream {
		e.Downstream = false
	}
	if !mask.ExpiresAt {
		e.ExpiresAt = 0
	}
	if !mask.DnsNames {
		e.DnsNames = nil
	}
	if !mask.RevisionNumber {
		e.RevisionNumber = 0
	}
	if !mask.StoreSvid {
		e.StoreSvid = false
	}
	if !mask.Hint {
		e.Hint = ""
	}
	if !mask.CreatedAt {
		e.CreatedAt = 0
	}
	if !mask.AdditionalAttributes {
		e.AdditionalAttributes = nil
	}
}

// EntryMaskFromProto converts an input mask; nil means all fields.
func EntryMaskFromProto(m *types.EntryMask) *datastore.EntryMask {
	if m == nil {
		return nil
	}
	return &datastore.EntryMask{
		SPIFFEID:      m.SpiffeId,
		ParentID:      m.ParentId,
		Selectors:     m.Selectors,
		X509SVIDTTL:   m.X509SvidTtl,
		JWTSVIDTTL:    m.JwtSvidTtl,
		DNSNames:      m.DnsNames,
		FederatesWith: m.FederatesWith,
		Admin:         m.Admin,
		Downstream:    m.Downstream,
		Hint:          m.Hint,
		StoreSVID:     m.StoreSvid,
		ExpiresAt:     m.ExpiresAt,
	}
}

// EntryFromProto converts and validates a wire entry for the server of td.
// Only the fields selected by mask (nil = all) are read and validated;
// the others are left zero. Errors name the bad field.
func EntryFromProto(td spiffeid.TrustDomain, e *types.Entry, mask *types.EntryMask) (*datastore.Entry, error) {
	if e == nil {
		return nil, errors.New("missing entry")
	}
	if mask == nil {
		mask = AllEntryFields
	}
	out := &datastore.Entry{ID: e.Id}
	if e.Id != "" {
		if err := ValidateEntryID(e.Id); err != nil {
			return nil, err
		}
	}
	if mask.ParentId {
		id, err := IDFromProto(e.ParentId)
		if err != nil {
			return nil, fmt.Errorf("invalid parent ID: %w", err)
		}
		out.ParentID = id.String()
	}
	if mask.SpiffeId {
		id, err := IDFromProto(e.SpiffeId)
		if err != nil {
			return nil, fmt.Errorf("invalid spiffe ID: %w", err)
		}
		out.SPIFFEID = id.String()
	}
	if mask.Selectors {
		out.Selectors = SelectorsFromProto(e.Selectors)
	}
	if mask.X509SvidTtl {
		out.X509SVIDTTL = e.X509SvidTtl
	}
	if mask.JwtSvidTtl {
		out.JWTSVIDTTL = e.JwtSvidTtl
	}
	if mask.DnsNames {
		out.DNSNames = slices.Clone(e.DnsNames)
	}
	if mask.FederatesWith {
		out.FederatesWith = make([]string, 0, len(e.FederatesWith))
		for _, s := range e.FederatesWith {
			ftd, err := TrustDomainFromNameOrID(s)
			if err != nil {
				return nil, fmt.Errorf("invalid federated trust domain: %w", err)
			}
			out.FederatesWith = append(out.FederatesWith, ftd.Name())
		}
	}
	if mask.Admin {
		out.Admin = e.Admin
	}
	if mask.Downstream {
		out.Downstream = e.Downstream
	}
	if mask.ExpiresAt {
		out.ExpiresAt = e.ExpiresAt
	}
	if mask.StoreSvid {
		out.StoreSVID = e.StoreSvid
	}
	if mask.Hint {
		out.Hint = e.Hint
	}
	if err := ValidateEntry(td, out, EntryMaskFromProto(mask)); err != nil {
		return nil, err
	}
	out.Selectors = selector.Dedupe(out.Selectors)
	out.FederatesWith = dedupeStrings(out.FederatesWith)
	out.DNSNames = dedupeStringsKeepOrder(out.DNSNames)
	return out, nil
}

// ValidateEntry checks the fields of e selected by mask (nil = all) for
// the server of trust domain td:
//   - parent ID: a valid SPIFFE ID in td with a path;
//   - SPIFFE ID: a valid SPIFFE ID in td, outside the reserved /spire path;
//   - at least one selector, each valid;
//   - TTLs not negative;
//   - DNS names valid (a leading "*." wildcard label is allowed);
//   - federates_with: valid trust domain names other than td;
//   - hint at most MaxHintLength bytes; entry ID, when set, valid.
func ValidateEntry(td spiffeid.TrustDomain, e *datastore.Entry, mask *datastore.EntryMask) error {
	if e == nil {
		return errors.New("missing entry")
	}
	all := mask == nil
	if mask == nil {
		mask = &datastore.EntryMask{}
	}
	if e.ID != "" {
		if err := ValidateEntryID(e.ID); err != nil {
			return err
		}
	}
	if all || mask.ParentID {
		id, err := ParseID(e.ParentID)
		if err != nil {
			return fmt.Errorf("invalid parent ID: %w", err)
		}
		if err := VerifyMemberID(td, id); err != nil {
			return fmt.Errorf("invalid parent ID: %w", err)
		}
	}
	if all || mask.SPIFFEID {
		id, err := ParseID(e.SPIFFEID)
		if err != nil {
			return fmt.Errorf("invalid spiffe ID: %w", err)
		}
		if err := VerifyWorkloadID(td, id); err != nil {
			return fmt.Errorf("invalid spiffe ID: %w", err)
		}
	}
	if all || mask.Selectors {
		if len(e.Selectors) == 0 {
			return errors.New("selector list is empty")
		}
		for _, s := range e.Selectors {
			if err := s.Validate(); err != nil {
				return fmt.Errorf("invalid selector %s: %w", clip.Quote(s.String()), err)
			}
		}
	}
	if (all || mask.X509SVIDTTL) && e.X509SVIDTTL < 0 {
		return fmt.Errorf("invalid x509_svid_ttl %d: must not be negative", e.X509SVIDTTL)
	}
	if (all || mask.JWTSVIDTTL) && e.JWTSVIDTTL < 0 {
		return fmt.Errorf("invalid jwt_svid_ttl %d: must not be negative", e.JWTSVIDTTL)
	}
	if all || mask.DNSNames {
		for _, n := range e.DNSNames {
			if err := ValidateDNSName(n); err != nil {
				return fmt.Errorf("invalid DNS name: %w", err)
			}
		}
	}
	if all || mask.FederatesWith {
		for _, name := range e.FederatesWith {
			ftd, err := TrustDomainFromName(name)
			if err != nil {
				return fmt.Errorf("invalid federated trust domain: %w", err)
			}
			if ftd == td {
				return fmt.Errorf("invalid federated trust domain: %s is the server's own trust domain", clip.Quote(name))
			}
		}
	}
	if (all || mask.Hint) && len(e.Hint) > MaxHintLength {
		return fmt.Errorf("hint is too long, max length is %d characters", MaxHintLength)
	}
	return nil
}

// ValidateEntryID checks a caller-chosen entry ID: 1-255 characters from
// letters, digits, '-', '_' and '.'.
func ValidateEntryID(id string) error {
	if id == "" {
		return errors.New("invalid entry ID: empty")
	}
	if len(id) > MaxEntryIDLength {
		return fmt.Errorf("invalid entry ID: longer than %d characters", MaxEntryIDLength)
	}
	for _, r := range id {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
		default:
			return fmt.Errorf("invalid entry ID %s: only letters, digits, '-', '_' and '.' are allowed", clip.Quote(id))
		}
	}
	return nil
}

// ValidateDNSName checks a DNS name for an X.509 SAN: labels of 1-63
// letters, digits and hyphens (not at either end), at most 253 bytes in
// all; the first label may be the wildcard "*".
func ValidateDNSName(name string) error {
	if name == "" {
		return errors.New("empty DNS name")
	}
	if len(name) > maxDNSNameLength {
		return fmt.Errorf("%s is longer than %d bytes", clip.Quote(name), maxDNSNameLength)
	}
	labels := strings.Split(name, ".")
	for i, l := range labels {
		if i == 0 && l == "*" && len(labels) > 1 {
			continue
		}
		if l == "" {
			return fmt.Errorf("%s has an empty label", clip.Quote(name))
		}
		if len(l) > maxDNSLabel {
			return fmt.Errorf("%s has a label longer than %d bytes", clip.Quote(name), maxDNSLabel)
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("%s has a label starting or ending with '-'", clip.Quote(name))
		}
		for j := 0; j < len(l); j++ {
			c := l[j]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("%s contains %q; labels are limited to letters, digits and '-'", clip.Quote(name), string(rune(c)))
			}
		}
	}
	return nil
}

// SelectorsFromProto converts wire selectors (not validated).
func SelectorsFromProto(in []*types.Selector) []selector.Selector {
	out := make([]selector.Selector, 0, len(in))
	for _, s := range in {
		if s == nil {
			out = append(out, selector.Selector{})
			continue
		}
		out = append(out, selector.Selector{Type: s.Type, Value: s.Value})
	}
	return out
}

// SelectorsFromProtoValidated converts and validates wire selectors.
func SelectorsFromProtoValidated(in []*types.Selector) ([]selector.Selector, error) {
	out := SelectorsFromProto(in)
	for _, s := range out {
		if err := s.Validate(); err != nil {
			return nil, fmt.Errorf("invalid selector %s: %w", clip.Quote(s.String()), err)
		}
	}
	return out, nil
}

// SelectorsToProto converts selectors to their wire form.
func SelectorsToProto(in []selector.Selector) []*types.Selector {
	if in == nil {
		return nil
	}
	out := make([]*types.Selector, 0, len(in))
	for _, s := range in {
		out = append(out, &types.Selector{Type: s.Type, Value: s.Value})
	}
	return out
}

func dedupeStrings(in []string) []string {
	if in == nil {
		return nil
	}
	out := slices.Clone(in)
	slices.Sort(out)
	return slices.Compact(out)
}

func dedupeStringsKeepOrder(in []string) []string {
	if in == nil {
		return nil
	}
	seen := make(map[string]struct{}, len(in))
	out := make([]string, 0, len(in))
	for _, s := range in {
		if _, ok := seen[s]; ok {
			continue
		}
		seen[s] = struct{}{}
		out = append(out, s)
	}
	return out
}
