package audit

import (
	"fmt"
	"log/slog"
	"strings"

	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	trustdomainv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/trustdomain/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// extracted is what a call's request (and response) say: fields common to
// its lines and, for a batch call, one item per element.
type extracted struct {
	fields []slog.Attr
	// items is non-nil for a batch call whose response arrived: one per
	// request element, with its own status and fields.
	items []item
}

type item struct {
	status *status.Status
	fields []slog.Attr
}

// itemStatus converts a batch result's status.
func itemStatus(s *types.Status) *status.Status {
	if s == nil {
		return nil
	}
	return status.New(codes.Code(s.GetCode()), s.GetMessage())
}

// batch pairs the n request elements with the response's results: fields
// of element i from req(i), plus res(i) when the result exists.
func batch(n int, hasResponse bool, nres int, req func(i int) []slog.Attr, res func(i int) (*types.Status, []slog.Attr)) []item {
	if !hasResponse {
		return nil
	}
	items := make([]item, 0, n)
	for i := range n {
		it := item{fields: req(i)}
		if i < nres {
			st, more := res(i)
			it.status = itemStatus(st)
			it.fields = append(it.fields, more...)
		}
		items = append(items, it)
	}
	return items
}

// extract reads the identifying fields of a call's request and response.
// It never reads secrets: tokens, keys, CSRs, JWTs, attestation payloads.
func extract(c Call) extracted {
	var x extracted
	switch r := c.Request.(type) {
	// agent/v1
	case *agentv1.AttestAgentRequest:
		x.fields = append(x.fields, str("node_attestor_type", r.GetParams().GetData().GetType()))
		if res, ok := c.Response.(*agentv1.AttestAgentResponse); ok && res.GetResult() != nil {
			x.fields = append(x.fields, server("agent_id", idString(res.GetResult().GetSvid().GetId())))
		}
	case *agentv1.CreateJoinTokenRequest:
		x.fields = append(x.fields, i32("ttl", r.GetTtl()))
		if r.GetAgentId() != nil {
			x.fields = append(x.fields, str("spiffe_id", idString(r.GetAgentId())))
		}
	case *agentv1.BanAgentRequest:
		x.fields = append(x.fields, str("spiffe_id", idString(r.GetId())))
	case *agentv1.DeleteAgentRequest:
		x.fields = append(x.fields, str("spiffe_id", idString(r.GetId())))
	case *agentv1.GetAgentRequest:
		x.fields = append(x.fields, str("spiffe_id", idString(r.GetId())))
	case *agentv1.ListAgentsRequest:
		f := r.GetFilter()
		x.fields = agentFilter(f.GetByAttestationType(), f.GetBySelectorMatch(), f.GetByBanned(), f.GetByCanReattest(), f.GetByExpiresBefore())
	case *agentv1.CountAgentsRequest:
		f := r.GetFilter()
		x.fields = agentFilter(f.GetByAttestationType(), f.GetBySelectorMatch(), f.GetByBanned(), f.GetByCanReattest(), f.GetByExpiresBefore())
	case *agentv1.PostStatusRequest:
		if v := r.GetAgentVersion(); v != "" {
			x.fields = append(x.fields, str("version", v))
		}

	// entry/v1
	case *entryv1.GetEntryRequest:
		x.fields = append(x.fields, str("entry_id", r.GetId()))
	case *entryv1.ListEntriesRequest:
		f := r.GetFilter()
		x.fields = entryFilter(f.GetBySpiffeId(), f.GetByParentId(), f.GetBySelectors(), f.GetByFederatesWith(), f.GetByHint(), f.GetByDownstream())
	case *entryv1.CountEntriesRequest:
		f := r.GetFilter()
		x.fields = entryFilter(f.GetBySpiffeId(), f.GetByParentId(), f.GetBySelectors(), f.GetByFederatesWith(), f.GetByHint(), f.GetByDownstream())
	case *entryv1.BatchCreateEntryRequest:
		res, ok := c.Response.(*entryv1.BatchCreateEntryResponse)
		x.items = batch(len(r.GetEntries()), ok, len(res.GetResults()),
			func(i int) []slog.Attr { return entryFields(r.GetEntries()[i], nil) },
			func(i int) (*types.Status, []slog.Attr) {
				rr := res.GetResults()[i]
				var f []slog.Attr
				if id := rr.GetEntry().GetId(); id != "" && r.GetEntries()[i].GetId() == "" {
					f = append(f, server("entry_id", id))
				}
				return rr.GetStatus(), f
			})
	case *entryv1.BatchUpdateEntryRequest:
		res, ok := c.Response.(*entryv1.BatchUpdateEntryResponse)
		x.items = batch(len(r.GetEntries()), ok, len(res.GetResults()),
			func(i int) []slog.Attr { return entryFields(r.GetEntries()[i], r.GetInputMask()) },
			func(i int) (*types.Status, []slog.Attr) { return res.GetResults()[i].GetStatus(), nil })
	case *entryv1.BatchDeleteEntryRequest:
		res, ok := c.Response.(*entryv1.BatchDeleteEntryResponse)
		x.items = batch(len(r.GetIds()), ok, len(res.GetResults()),
			func(i int) []slog.Attr { return []slog.Attr{str("entry_id", r.GetIds()[i])} },
			func(i int) (*types.Status, []slog.Attr) { return res.GetResults()[i].GetStatus(), nil })

	// bundle/v1
	case *bundlev1.AppendBundleRequest:
		var kids []string
		for _, k := range r.GetJwtAuthorities() {
			kids = append(kids, k.GetKeyId())
		}
		x.fields = append(x.fields, slog.Int("x509_authorities", len(r.GetX509Authorities())))
		if len(kids) > 0 {
			x.fields = append(x.fields, list("jwt_authority_key_id", kids))
		}
	case *bundlev1.PublishJWTAuthorityRequest:
		x.fields = append(x.fields, str("jwt_authority_key_id", r.GetJwtAuthority().GetKeyId()),
			slog.Int64("jwt_authority_expires_at", r.GetJwtAuthority().GetExpiresAt()))
	case *bundlev1.GetFederatedBundleRequest:
		x.fields = append(x.fields, str("trust_domain_id", r.GetTrustDomain()))
	case *bundlev1.BatchCreateFederatedBundleRequest:
		res, ok := c.Response.(*bundlev1.BatchCreateFederatedBundleResponse)
		x.items = batch(len(r.GetBundle()), ok, len(res.GetResults()),
			func(i int) []slog.Attr { return []slog.Attr{str("trust_domain_id", r.GetBundle()[i].GetTrustDomain())} },
			func(i int) (*types.Status, []slog.Attr) { return res.GetResults()[i].GetStatus(), nil })
	case *bundlev1.BatchUpdateFederatedBundleRequest:
		res, ok := c.Response.(*bundlev1.BatchUpdateFederatedBundleResponse)
		x.items = batch(len(r.GetBundle()), ok, len(res.GetResults()),
			func(i int) []slog.Attr { return []slog.Attr{str("trust_domain_id", r.GetBundle()[i].GetTrustDomain())} },
			func(i int) (*types.Status, []slog.Attr) { return res.GetResults()[i].GetStatus(), nil })
	case *bundlev1.BatchSetFederatedBundleRequest:
		res, ok := c.Response.(*bundlev1.BatchSetFederatedBundleResponse)
		x.items = batch(len(r.GetBundle()), ok, len(res.GetResults()),
			func(i int) []slog.Attr { return []slog.Attr{str("trust_domain_id", r.GetBundle()[i].GetTrustDomain())} },
			func(i int) (*types.Status, []slog.Attr) { return res.GetResults()[i].GetStatus(), nil })
	case *bundlev1.BatchDeleteFederatedBundleRequest:
		res, ok := c.Response.(*bundlev1.BatchDeleteFederatedBundleResponse)
		x.fields = append(x.fields, slog.String("mode", r.GetMode().String()))
		x.items = batch(len(r.GetTrustDomains()), ok, len(res.GetResults()),
			func(i int) []slog.Attr { return []slog.Attr{str("trust_domain_id", r.GetTrustDomains()[i])} },
			func(i int) (*types.Status, []slog.Attr) { return res.GetResults()[i].GetStatus(), nil })

	// svid/v1
	case *svidv1.MintX509SVIDRequest:
		x.fields = append(x.fields, i32("ttl", r.GetTtl()))
		if res, ok := c.Response.(*svidv1.MintX509SVIDResponse); ok && res.GetSvid() != nil {
			x.fields = append(x.fields, server("spiffe_id", idString(res.GetSvid().GetId())), slog.Int64("expires_at", res.GetSvid().GetExpiresAt()))
		}
	case *svidv1.MintJWTSVIDRequest:
		x.fields = append(x.fields, str("spiffe_id", idString(r.GetId())), list("audience", r.GetAudience()), i32("ttl", r.GetTtl()))
	case *svidv1.NewJWTSVIDRequest:
		x.fields = append(x.fields, str("entry_id", r.GetEntryId()), list("audience", r.GetAudience()))
	case *svidv1.NewDownstreamX509CARequest:
		x.fields = append(x.fields, i32("ttl", r.GetPreferredTtl()))
	case *svidv1.BatchNewX509SVIDRequest:
		res, ok := c.Response.(*svidv1.BatchNewX509SVIDResponse)
		x.items = batch(len(r.GetParams()), ok, len(res.GetResults()),
			func(i int) []slog.Attr { return []slog.Attr{str("entry_id", r.GetParams()[i].GetEntryId())} },
			func(i int) (*types.Status, []slog.Attr) {
				rr := res.GetResults()[i]
				var f []slog.Attr
				if s := rr.GetSvid(); s != nil {
					f = append(f, server("spiffe_id", idString(s.GetId())), slog.Int64("expires_at", s.GetExpiresAt()))
				}
				return rr.GetStatus(), f
			})

	// trustdomain/v1
	case *trustdomainv1.GetFederationRelationshipRequest:
		x.fields = append(x.fields, str("trust_domain_id", r.GetTrustDomain()))
	case *trustdomainv1.RefreshBundleRequest:
		x.fields = append(x.fields, str("trust_domain_id", r.GetTrustDomain()))
	case *trustdomainv1.BatchCreateFederationRelationshipRequest:
		res, ok := c.Response.(*trustdomainv1.BatchCreateFederationRelationshipResponse)
		x.items = batch(len(r.GetFederationRelationships()), ok, len(res.GetResults()),
			func(i int) []slog.Attr { return relationshipFields(r.GetFederationRelationships()[i]) },
			func(i int) (*types.Status, []slog.Attr) { return res.GetResults()[i].GetStatus(), nil })
	case *trustdomainv1.BatchUpdateFederationRelationshipRequest:
		res, ok := c.Response.(*trustdomainv1.BatchUpdateFederationRelationshipResponse)
		x.items = batch(len(r.GetFederationRelationships()), ok, len(res.GetResults()),
			func(i int) []slog.Attr { return relationshipFields(r.GetFederationRelationships()[i]) },
			func(i int) (*types.Status, []slog.Attr) { return res.GetResults()[i].GetStatus(), nil })
	case *trustdomainv1.BatchDeleteFederationRelationshipRequest:
		res, ok := c.Response.(*trustdomainv1.BatchDeleteFederationRelationshipResponse)
		x.items = batch(len(r.GetTrustDomains()), ok, len(res.GetResults()),
			func(i int) []slog.Attr { return []slog.Attr{str("trust_domain_id", r.GetTrustDomains()[i])} },
			func(i int) (*types.Status, []slog.Attr) { return res.GetResults()[i].GetStatus(), nil })
	}
	return x
}

// idString renders a SPIFFE ID of a request as spiffe://td/path without
// validating it (the handler does).
func idString(id *types.SPIFFEID) string {
	if id == nil {
		return ""
	}
	return "spiffe://" + id.GetTrustDomain() + id.GetPath()
}

func selectorsString(sels []*types.Selector) string {
	parts := make([]string, 0, len(sels))
	for _, s := range sels {
		parts = append(parts, s.GetType()+":"+s.GetValue())
	}
	return strings.Join(parts, ",")
}

// entryFields are SPIRE's audit fields of an entry (those in mask, all
// when mask is nil).
func entryFields(e *types.Entry, mask *types.EntryMask) []slog.Attr {
	var f []slog.Attr
	if e == nil {
		return f
	}
	if e.GetId() != "" {
		f = append(f, str("entry_id", e.GetId()))
	}
	all := mask == nil
	if (all || mask.GetSpiffeId()) && e.GetSpiffeId() != nil {
		f = append(f, str("spiffe_id", idString(e.GetSpiffeId())))
	}
	if (all || mask.GetParentId()) && e.GetParentId() != nil {
		f = append(f, str("parent_id", idString(e.GetParentId())))
	}
	if (all || mask.GetSelectors()) && len(e.GetSelectors()) > 0 {
		f = append(f, str("selectors", selectorsString(e.GetSelectors())))
	}
	if all || mask.GetX509SvidTtl() {
		f = append(f, i32("x509_svid_ttl", e.GetX509SvidTtl()))
	}
	if all || mask.GetJwtSvidTtl() {
		f = append(f, i32("jwt_svid_ttl", e.GetJwtSvidTtl()))
	}
	if (all || mask.GetFederatesWith()) && len(e.GetFederatesWith()) > 0 {
		f = append(f, list("federates_with", e.GetFederatesWith()))
	}
	if all || mask.GetAdmin() {
		f = append(f, slog.Bool("admin", e.GetAdmin()))
	}
	if all || mask.GetDownstream() {
		f = append(f, slog.Bool("downstream", e.GetDownstream()))
	}
	if all || mask.GetExpiresAt() {
		f = append(f, slog.Int64("expires_at", e.GetExpiresAt()))
	}
	if (all || mask.GetDnsNames()) && len(e.GetDnsNames()) > 0 {
		f = append(f, list("dns_name", e.GetDnsNames()))
	}
	if (all || mask.GetHint()) && e.GetHint() != "" {
		f = append(f, str("hint", e.GetHint()))
	}
	if all || mask.GetStoreSvid() {
		f = append(f, slog.Bool("store_svid", e.GetStoreSvid()))
	}
	return f
}

func entryFilter(spiffeID, parentID *types.SPIFFEID, sels *types.SelectorMatch, fed *types.FederatesWithMatch,
	hint *wrapperspb.StringValue, downstream *wrapperspb.BoolValue) []slog.Attr {
	var f []slog.Attr
	if spiffeID != nil {
		f = append(f, str("by_spiffe_id", idString(spiffeID)))
	}
	if parentID != nil {
		f = append(f, str("by_parent_id", idString(parentID)))
	}
	if sels != nil {
		f = append(f, str("by_selectors", selectorsString(sels.GetSelectors())), slog.String("by_selector_match", sels.GetMatch().String()))
	}
	if fed != nil {
		f = append(f, list("by_federates_with", fed.GetTrustDomains()), slog.String("by_federates_with_match", fed.GetMatch().String()))
	}
	if hint != nil {
		f = append(f, str("by_hint", hint.GetValue()))
	}
	if downstream != nil {
		f = append(f, slog.Bool("by_downstream", downstream.GetValue()))
	}
	return f
}

func agentFilter(attType string, sels *types.SelectorMatch, banned, canReattest *wrapperspb.BoolValue, expiresBefore string) []slog.Attr {
	var f []slog.Attr
	if attType != "" {
		f = append(f, str("by_attestation_type", attType))
	}
	if sels != nil {
		f = append(f, str("by_selectors", selectorsString(sels.GetSelectors())), slog.String("by_selector_match", sels.GetMatch().String()))
	}
	if banned != nil {
		f = append(f, slog.Bool("by_banned", banned.GetValue()))
	}
	if canReattest != nil {
		f = append(f, slog.Bool("by_can_reattest", canReattest.GetValue()))
	}
	if expiresBefore != "" {
		f = append(f, str("by_expires_before", expiresBefore))
	}
	return f
}

func relationshipFields(fr *types.FederationRelationship) []slog.Attr {
	f := []slog.Attr{str("trust_domain_id", fr.GetTrustDomain()), str("bundle_endpoint_url", fr.GetBundleEndpointUrl())}
	switch p := fr.GetBundleEndpointProfile().(type) {
	case *types.FederationRelationship_HttpsWeb:
		f = append(f, slog.String("bundle_endpoint_profile", "https_web"))
	case *types.FederationRelationship_HttpsSpiffe:
		f = append(f, slog.String("bundle_endpoint_profile", "https_spiffe"),
			str("endpoint_spiffe_id", p.HttpsSpiffe.GetEndpointSpiffeId()))
	case nil:
	default:
		f = append(f, slog.String("bundle_endpoint_profile", fmt.Sprintf("%T", p)))
	}
	return f
}
