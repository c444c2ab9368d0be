// Package trustdomain implements the spire-api-sdk TrustDomain service
// (trustdomain/v1): federation relationships stored in the datastore
// (List/Get/BatchCreate/BatchUpdate/BatchDelete) and RefreshBundle, with
// SPIRE's messages. Relationships of the server configuration are not
// listed (as in SPIRE) and take precedence over stored ones for the same
// trust domain.
//
// Sigil extension: List and Get carry every relationship's refresh status,
// the configuration's relationships included, in a trailer (fedstatus),
// which sigil-server's CLI shows and other clients ignore.
//
// Stricter than SPIRE: an https_spiffe endpoint's SPIFFE ID must be in the
// relationship's trust domain; a duplicate is AlreadyExists and a missing
// relationship NotFound (SPIRE: Internal); a bundle given with a
// relationship needs an X.509 authority.
package trustdomain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	trustdomainv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/trustdomain/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/fedstatus"
	"github.com/sigil-spiffe/sigil/internal/server/api/apistatus"
	"github.com/sigil-spiffe/sigil/internal/server/api/convert"
	"github.com/sigil-spiffe/sigil/internal/server/federation"
)

// Store is the part of the datastore the service uses.
type Store interface {
	CreateFederationRelationship(ctx context.Context, fr *datastore.FederationRelationship, bundle *datastore.Bundle) (*datastore.FederationRelationship, error)
	GetFederationRelationship(ctx context.Context, trustDomain string) (*datastore.FederationRelationship, error)
	ListFederationRelationships(ctx context.Context, p datastore.Page) ([]*datastore.FederationRelationship, string, error)
	UpdateFederationRelationship(ctx context.Context, fr *datastore.FederationRelationship, mask *datastore.FederationRelationshipMask, bundle *datastore.Bundle) (*datastore.FederationRelationship, error)
	DeleteFederationRelationship(ctx context.Context, trustDomain string) error
	GetBundle(ctx context.Context, trustDomain string) (*datastore.Bundle, error)
}

// Refresher runs the relationships' refreshers (federation.Manager).
type Refresher interface {
	TriggerReload()
	RefreshBundleFor(ctx context.Context, td spiffeid.TrustDomain) (bool, error)
	Statuses() []federation.Status
	Status(td spiffeid.TrustDomain) (federation.Status, bool)
}

// Cache is told when a relationship wrote a bundle (entrycache.Cache).
type Cache interface {
	BundleChanged()
}

// Config configures the service.
type Config struct {
	Store       Store
	Refresher   Refresher
	Cache       Cache
	TrustDomain spiffeid.TrustDomain
	Log         *slog.Logger
}

// Service implements trustdomainv1.TrustDomainServer.
type Service struct {
	trustdomainv1.UnimplementedTrustDomainServer

	store Store
	ref   Refresher
	cache Cache
	td    spiffeid.TrustDomain
	log   *slog.Logger
}

// New returns the service.
func New(cfg Config) *Service {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{store: cfg.Store, ref: cfg.Refresher, cache: cfg.Cache, td: cfg.TrustDomain, log: log.With("service", "trustdomain")}
}

// Register registers the service on g.
func (s *Service) Register(g *grpc.Server) { trustdomainv1.RegisterTrustDomainServer(g, s) }

func (s *Service) makeErr(code codes.Code, msg string, err error) error {
	return apistatus.Error(s.log, "trustdomain", code, msg, err)
}

// ListFederationRelationships lists the stored relationships; page_size 0
// returns all of them (as SPIRE).
func (s *Service) ListFederationRelationships(ctx context.Context, req *trustdomainv1.ListFederationRelationshipsRequest) (*trustdomainv1.ListFederationRelationshipsResponse, error) {
	var page datastore.Page
	if req.PageSize > 0 {
		page = datastore.Page{Size: int(req.PageSize), Token: req.PageToken}
	} else if req.PageSize < 0 {
		return nil, s.makeErr(codes.InvalidArgument, "page size must not be negative", nil)
	}
	frs, next, err := s.store.ListFederationRelationships(ctx, page)
	if err != nil {
		if errors.Is(err, datastore.ErrInvalidPage) {
			return nil, s.makeErr(codes.InvalidArgument, "could not parse page token", nil)
		}
		return nil, s.makeErr(codes.Internal, "failed to list federation relationships", err)
	}
	resp := &trustdomainv1.ListFederationRelationshipsResponse{NextPageToken: next}
	stored := map[string]bool{}
	for _, fr := range frs {
		stored[fr.TrustDomain] = true
		out, err := s.toProto(ctx, fr, req.OutputMask)
		if err != nil {
			return nil, s.makeErr(codes.Internal, "failed to convert datastore response", err)
		}
		resp.FederationRelationships = append(resp.FederationRelationships, out)
	}
	// Statuses of the listed ones, and on the first page every
	// configuration relationship.
	var sts []federation.Status
	if s.ref != nil {
		for _, st := range s.ref.Statuses() {
			if stored[st.Relationship.TrustDomain.Name()] || (req.PageToken == "" && st.Relationship.FromConfig) {
				sts = append(sts, st)
			}
		}
	}
	s.trailer(ctx, sts...)
	return resp, nil
}

// GetFederationRelationship returns the stored relationship with a trust
// domain. A relationship of the configuration only is NotFound, as in
// SPIRE, with its status in the trailer.
func (s *Service) GetFederationRelationship(ctx context.Context, req *trustdomainv1.GetFederationRelationshipRequest) (*types.FederationRelationship, error) {
	td, err := convert.TrustDomainFromNameOrID(req.TrustDomain)
	if err != nil {
		return nil, s.makeErr(codes.InvalidArgument, "failed to parse trust domain", err)
	}
	if s.ref != nil {
		if st, ok := s.ref.Status(td); ok {
			s.trailer(ctx, st)
		}
	}
	fr, err := s.store.GetFederationRelationship(ctx, td.Name())
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return nil, s.makeErr(codes.NotFound, "federation relationship does not exist", nil)
	case err != nil:
		return nil, s.makeErr(codes.Internal, "failed to fetch federation relationship", err)
	}
	out, err := s.toProto(ctx, fr, req.OutputMask)
	if err != nil {
		return nil, s.makeErr(codes.Internal, "failed to convert datastore response", err)
	}
	return out, nil
}

// trailer attaches statuses (fedstatus) to the call's trailer.
func (s *Service) trailer(ctx context.Context, sts ...federation.Status) {
	if len(sts) == 0 {
		return
	}
	wire := make([]fedstatus.Status, 0, len(sts))
	for _, st := range sts {
		wire = append(wire, s.statusToWire(ctx, st))
	}
	md, err := fedstatus.Append(nil, wire...)
	if err == nil {
		err = grpc.SetTrailer(ctx, md)
	}
	if err != nil {
		s.log.Debug("Could not attach the federation status", "error", err)
	}
}

func (s *Service) statusToWire(ctx context.Context, st federation.Status) fedstatus.Status {
	r := st.Relationship
	out := fedstatus.Status{
		TrustDomain:         r.TrustDomain.Name(),
		Source:              fedstatus.SourceDatastore,
		BundleEndpointURL:   r.BundleEndpointURL,
		Profile:             r.Profile,
		LastAttempt:         st.LastAttempt.UTC(),
		LastSuccess:         st.LastSuccess.UTC(),
		LastError:           st.LastError,
		LastErrorAt:         st.LastErrorAt.UTC(),
		ConsecutiveFailures: st.ConsecutiveFailures,
		FailingSince:        st.FailingSince.UTC(),
		NextAttempt:         st.NextAttempt.UTC(),
		Now:                 st.Now.UTC(),
	}
	if !r.EndpointSPIFFEID.IsZero() {
		out.EndpointSPIFFEID = r.EndpointSPIFFEID.String()
	}
	if st.Interval > 0 {
		out.RefreshIntervalSeconds = int64(st.Interval.Seconds())
	}
	if age, ok := st.BundleAge(); ok {
		secs := int64(age.Seconds())
		out.BundleAgeSeconds = &secs
	}
	if r.FromConfig {
		out.Source = fedstatus.SourceConfig
		if _, err := s.store.GetFederationRelationship(ctx, r.TrustDomain.Name()); err == nil {
			out.OverridesStored = true
		}
	}
	return out
}

// toProto converts a stored relationship with its trust domain's current
// bundle (when there is one), masked.
func (s *Service) toProto(ctx context.Context, fr *datastore.FederationRelationship, mask *types.FederationRelationshipMask) (*types.FederationRelationship, error) {
	out := &types.FederationRelationship{TrustDomain: fr.TrustDomain}
	if mask == nil || mask.BundleEndpointUrl {
		out.BundleEndpointUrl = fr.BundleEndpointURL
	}
	if mask == nil || mask.BundleEndpointProfile {
		switch fr.Profile {
		case datastore.ProfileHTTPSSPIFFE:
			out.BundleEndpointProfile = &types.FederationRelationship_HttpsSpiffe{HttpsSpiffe: &types.HTTPSSPIFFEProfile{EndpointSpiffeId: fr.EndpointSPIFFEID}}
		case datastore.ProfileHTTPSWeb:
			out.BundleEndpointProfile = &types.FederationRelationship_HttpsWeb{HttpsWeb: &types.HTTPSWebProfile{}}
		default:
			return nil, fmt.Errorf("unsupported bundle endpoint profile %s", clip.Quote(fr.Profile))
		}
	}
	if mask == nil || mask.TrustDomainBundle {
		b, err := s.store.GetBundle(ctx, fr.TrustDomain)
		switch {
		case errors.Is(err, datastore.ErrNotFound):
		case err != nil:
			return nil, err
		default:
			out.TrustDomainBundle = convert.BundleToProto(b)
		}
	}
	return out, nil
}

// parsed is a relationship given to write, with its bundle (nil if none).
type parsed struct {
	fr     *datastore.FederationRelationship
	bundle *datastore.Bundle
}

// fromProto checks a relationship given to write; only the fields mask
// selects (nil: all) are read, the trust domain always.
func (s *Service) fromProto(pb *types.FederationRelationship, mask *types.FederationRelationshipMask) (*parsed, *types.Status) {
	bad := func(err error) (*parsed, *types.Status) {
		return nil, apistatus.New(codes.InvalidArgument, "failed to convert federation relationship", err)
	}
	if pb == nil {
		return bad(errors.New("missing federation relationship"))
	}
	td, err := convert.TrustDomainFromNameOrID(pb.TrustDomain)
	if err != nil {
		return bad(fmt.Errorf("failed to parse trust domain: %w", err))
	}
	p := &parsed{fr: &datastore.FederationRelationship{TrustDomain: td.Name()}}
	if mask == nil || mask.BundleEndpointUrl {
		u, err := config.ParseBundleEndpointURL(pb.BundleEndpointUrl)
		if err != nil {
			return bad(err)
		}
		p.fr.BundleEndpointURL = u.String()
	}
	if mask == nil || mask.BundleEndpointProfile {
		switch profile := pb.BundleEndpointProfile.(type) {
		case *types.FederationRelationship_HttpsSpiffe:
			if profile.HttpsSpiffe == nil {
				return bad(errors.New(`bundle endpoint profile does not contain "HttpsSpiffe"`))
			}
			id, err := convert.ParseID(profile.HttpsSpiffe.EndpointSpiffeId)
			if err != nil {
				return bad(fmt.Errorf("failed to parse endpoint SPIFFE ID: %w", err))
			}
			if err := config.CheckEndpointSPIFFEID(td, id); err != nil {
				return bad(err)
			}
			p.fr.Profile, p.fr.EndpointSPIFFEID = datastore.ProfileHTTPSSPIFFE, id.String()
		case *types.FederationRelationship_HttpsWeb:
			p.fr.Profile = datastore.ProfileHTTPSWeb
		default:
			return bad(errors.New("unsupported bundle endpoint profile: give https_spiffe or https_web"))
		}
	}
	if (mask == nil || mask.TrustDomainBundle) && pb.TrustDomainBundle != nil {
		b, err := convert.BundleFromProto(pb.TrustDomainBundle)
		if err != nil {
			return bad(fmt.Errorf("failed to parse bundle: %w", err))
		}
		if b.TrustDomain != td.Name() {
			return bad(fmt.Errorf("trust domain bundle (%s) must match the trust domain of the federation relationship (%s)", clip.Quote(b.TrustDomain), clip.Quote(td.Name())))
		}
		if len(b.X509Authorities) == 0 {
			return bad(errors.New("the trust domain bundle has no X.509 authority"))
		}
		p.bundle = b
	}
	return p, nil
}

// BatchCreateFederationRelationship creates relationships.
func (s *Service) BatchCreateFederationRelationship(ctx context.Context, req *trustdomainv1.BatchCreateFederationRelationshipRequest) (*trustdomainv1.BatchCreateFederationRelationshipResponse, error) {
	resp := &trustdomainv1.BatchCreateFederationRelationshipResponse{}
	var written, bundles bool
	for _, pb := range req.FederationRelationships {
		st, out, withBundle := s.createOne(ctx, pb, req.OutputMask)
		if out != nil {
			written = true
			bundles = bundles || withBundle
		}
		resp.Results = append(resp.Results, &trustdomainv1.BatchCreateFederationRelationshipResponse_Result{Status: st, FederationRelationship: out})
	}
	s.changed(written, bundles)
	return resp, nil
}

func (s *Service) createOne(ctx context.Context, pb *types.FederationRelationship, mask *types.FederationRelationshipMask) (*types.Status, *types.FederationRelationship, bool) {
	p, st := s.fromProto(pb, nil)
	if st != nil {
		return st, nil, false
	}
	if p.fr.TrustDomain == s.td.Name() {
		return apistatus.New(codes.InvalidArgument, "unable to create federation relationship for server trust domain", nil), nil, false
	}
	fr, err := s.store.CreateFederationRelationship(ctx, p.fr, p.bundle)
	switch {
	case errors.Is(err, datastore.ErrAlreadyExists):
		return apistatus.New(codes.AlreadyExists, "federation relationship already exists", nil), nil, false
	case errors.Is(err, datastore.ErrOutOfRange):
		return apistatus.New(codes.InvalidArgument, "failed to convert federation relationship", errors.New("bundle sequence number is out of range")), nil, false
	case err != nil:
		s.log.Error("Failed to create federation relationship", "trust_domain", p.fr.TrustDomain, "error", err)
		return apistatus.New(codes.Internal, "failed to create federation relationship", err), nil, false
	}
	s.warnWithoutBundle(ctx, fr, p.bundle != nil)
	out, err := s.toProto(ctx, fr, mask)
	if err != nil {
		return apistatus.New(codes.Internal, "failed to convert datastore response", err), nil, p.bundle != nil
	}
	s.log.Info("Federation relationship created", "trust_domain", fr.TrustDomain, "bundle_endpoint_url", clip.Cut(fr.BundleEndpointURL, 128), "profile", fr.Profile)
	return apistatus.OK(), out, p.bundle != nil
}

// warnWithoutBundle logs, as SPIRE, when an https_spiffe relationship has
// no bundle to authenticate its endpoint with (it waits for one).
func (s *Service) warnWithoutBundle(ctx context.Context, fr *datastore.FederationRelationship, given bool) {
	if given || fr.Profile != datastore.ProfileHTTPSSPIFFE {
		return
	}
	if _, err := s.store.GetBundle(ctx, fr.TrustDomain); errors.Is(err, datastore.ErrNotFound) {
		s.log.Warn("No bundle for the endpoint SPIFFE ID's trust domain: the relationship waits for one (federation update -trustDomainBundlePath, or bundle set)",
			"trust_domain", fr.TrustDomain, "endpoint_spiffe_id", fr.EndpointSPIFFEID)
	}
}

// changed reloads the refreshers after relationship writes and wakes the
// agents after bundle writes.
func (s *Service) changed(relationships, bundles bool) {
	if relationships && s.ref != nil {
		s.ref.TriggerReload()
	}
	if bundles && s.cache != nil {
		s.cache.BundleChanged()
	}
}

// BatchUpdateFederationRelationship updates the masked fields (nil: all)
// of stored relationships.
func (s *Service) BatchUpdateFederationRelationship(ctx context.Context, req *trustdomainv1.BatchUpdateFederationRelationshipRequest) (*trustdomainv1.BatchUpdateFederationRelationshipResponse, error) {
	resp := &trustdomainv1.BatchUpdateFederationRelationshipResponse{}
	var written, bundles bool
	for _, pb := range req.FederationRelationships {
		st, out, withBundle := s.updateOne(ctx, pb, req.InputMask, req.OutputMask)
		if out != nil {
			written = true
			bundles = bundles || withBundle
		}
		resp.Results = append(resp.Results, &trustdomainv1.BatchUpdateFederationRelationshipResponse_Result{Status: st, FederationRelationship: out})
	}
	s.changed(written, bundles)
	return resp, nil
}

func (s *Service) updateOne(ctx context.Context, pb *types.FederationRelationship, in, outMask *types.FederationRelationshipMask) (*types.Status, *types.FederationRelationship, bool) {
	p, st := s.fromProto(pb, in)
	if st != nil {
		return st, nil, false
	}
	if p.fr.TrustDomain == s.td.Name() {
		return apistatus.New(codes.InvalidArgument, "unable to update federation relationship for server trust domain", nil), nil, false
	}
	mask := &datastore.FederationRelationshipMask{BundleEndpointURL: true, Profile: true}
	if in != nil {
		mask = &datastore.FederationRelationshipMask{BundleEndpointURL: in.BundleEndpointUrl, Profile: in.BundleEndpointProfile}
	}
	fr, err := s.store.UpdateFederationRelationship(ctx, p.fr, mask, p.bundle)
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return apistatus.New(codes.NotFound, "federation relationship not found", nil), nil, false
	case errors.Is(err, datastore.ErrOutOfRange):
		return apistatus.New(codes.InvalidArgument, "failed to convert federation relationship", errors.New("bundle sequence number is out of range")), nil, false
	case err != nil:
		s.log.Error("Failed to update federation relationship", "trust_domain", p.fr.TrustDomain, "error", err)
		return apistatus.New(codes.Internal, "failed to update federation relationship", err), nil, false
	}
	s.warnWithoutBundle(ctx, fr, p.bundle != nil)
	out, err := s.toProto(ctx, fr, outMask)
	if err != nil {
		return apistatus.New(codes.Internal, "failed to convert federation relationship to proto", err), nil, p.bundle != nil
	}
	s.log.Info("Federation relationship updated", "trust_domain", fr.TrustDomain, "bundle_endpoint_url", clip.Cut(fr.BundleEndpointURL, 128), "profile", fr.Profile)
	return apistatus.OK(), out, p.bundle != nil
}

// BatchDeleteFederationRelationship deletes stored relationships (their
// bundles stay, as in SPIRE).
func (s *Service) BatchDeleteFederationRelationship(ctx context.Context, req *trustdomainv1.BatchDeleteFederationRelationshipRequest) (*trustdomainv1.BatchDeleteFederationRelationshipResponse, error) {
	resp := &trustdomainv1.BatchDeleteFederationRelationshipResponse{}
	written := false
	for _, name := range req.TrustDomains {
		st, td := s.deleteOne(ctx, name)
		if st.Code == int32(codes.OK) {
			written = true
		}
		resp.Results = append(resp.Results, &trustdomainv1.BatchDeleteFederationRelationshipResponse_Result{Status: st, TrustDomain: td})
	}
	s.changed(written, false)
	return resp, nil
}

func (s *Service) deleteOne(ctx context.Context, name string) (*types.Status, string) {
	if name == "" {
		return apistatus.New(codes.InvalidArgument, "missing trust domain", nil), name
	}
	td, err := convert.TrustDomainFromNameOrID(name)
	if err != nil {
		return apistatus.New(codes.InvalidArgument, "failed to parse trust domain", err), clip.Cut(name, clip.Max)
	}
	err = s.store.DeleteFederationRelationship(ctx, td.Name())
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return apistatus.New(codes.NotFound, "federation relationship not found", nil), td.Name()
	case err != nil:
		s.log.Error("Failed to delete federation relationship", "trust_domain", td.Name(), "error", err)
		return apistatus.New(codes.Internal, "failed to delete federation relationship", err), td.Name()
	}
	s.log.Info("Federation relationship deleted", "trust_domain", td.Name())
	return apistatus.OK(), td.Name()
}

// RefreshBundle fetches a federated trust domain's bundle now (stored or
// configuration relationship).
func (s *Service) RefreshBundle(ctx context.Context, req *trustdomainv1.RefreshBundleRequest) (*emptypb.Empty, error) {
	td, err := convert.TrustDomainFromNameOrID(req.GetTrustDomain())
	if err != nil {
		return nil, s.makeErr(codes.InvalidArgument, "failed to parse trust domain", err)
	}
	if s.ref == nil {
		return nil, s.makeErr(codes.NotFound, fmt.Sprintf("no relationship with trust domain %q", td.Name()), nil)
	}
	managed, err := s.ref.RefreshBundleFor(ctx, td)
	if !managed {
		return nil, s.makeErr(codes.NotFound, fmt.Sprintf("no relationship with trust domain %q", td.Name()), nil)
	}
	if err != nil {
		return nil, s.makeErr(codes.Internal, "failed to refresh bundle", err)
	}
	return &emptypb.Empty{}, nil
}
