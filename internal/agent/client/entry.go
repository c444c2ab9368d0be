package client

import (
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// EntryFromProto validates and converts an entry received from the server.
func EntryFromProto(e *types.Entry) (*cache.Entry, error) {
	if e == nil {
		return nil, errors.New("missing entry")
	}
	if e.Id == "" {
		return nil, errors.New("entry has no ID")
	}
	id, err := idFromProto(e.SpiffeId)
	if err != nil {
		return nil, fmt.Errorf("entry %q: SPIFFE ID: %w", e.Id, err)
	}
	var parent spiffeid.ID
	if e.ParentId != nil {
		if parent, err = idFromProto(e.ParentId); err != nil {
			return nil, fmt.Errorf("entry %q: parent ID: %w", e.Id, err)
		}
	}
	if len(e.Selectors) == 0 {
		return nil, fmt.Errorf("entry %q: no selectors", e.Id)
	}
	sels := make([]selector.Selector, 0, len(e.Selectors))
	for _, s := range e.Selectors {
		sel := selector.Selector{Type: s.GetType(), Value: s.GetValue()}
		if err := sel.Validate(); err != nil {
			return nil, fmt.Errorf("entry %q: %w", e.Id, err)
		}
		sels = append(sels, sel)
	}
	var feds []spiffeid.TrustDomain
	for _, name := range e.FederatesWith {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return nil, fmt.Errorf("entry %q: federates with %q: %w", e.Id, name, err)
		}
		feds = append(feds, td)
	}
	if e.X509SvidTtl < 0 || e.JwtSvidTtl < 0 || e.RevisionNumber < 0 {
		return nil, fmt.Errorf("entry %q: negative TTL or revision", e.Id)
	}
	out := &cache.Entry{
		ID:             e.Id,
		SPIFFEID:       id,
		ParentID:       parent,
		Selectors:      selector.Dedupe(sels),
		DNSNames:       append([]string(nil), e.DnsNames...),
		FederatesWith:  feds,
		Hint:           e.Hint,
		RevisionNumber: e.RevisionNumber,
		X509SVIDTTL:    time.Duration(e.X509SvidTtl) * time.Second,
		JWTSVIDTTL:     time.Duration(e.JwtSvidTtl) * time.Second,
		Admin:          e.Admin,
		Downstream:     e.Downstream,
	}
	if e.CreatedAt != 0 {
		out.CreatedAt = time.Unix(e.CreatedAt, 0).UTC()
	}
	return out, nil
}
