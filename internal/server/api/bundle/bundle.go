// Package bundle implements the spire-api-sdk Bundle service (bundle/v1):
// the server's own bundle (GetBundle, AppendBundle, PublishJWTAuthority)
// and federated bundles (List/Get/BatchCreate/Update/Set/Delete), with
// SPIRE's codes and messages. Who may call what is decided by the
// endpoints middleware. Every successful write calls Cache.BundleChanged so
// agents in watch mode are told at once; deleting entries or dissociating
// them from a deleted federated bundle also calls Cache.Poke.
//
// GetFederatedBundle also tells when the trust domain's bundle was last
// fetched from its bundle endpoint, in the response header
// RefreshedAtHeader (Unix seconds), when the server has fetched it (a
// federation relationship); a bundle only set by hand has none. It is a
// Sigil extension SPIRE clients ignore: sigil-agent reports its federated
// bundles' age from it.
//
// PublishWITAuthority is not implemented (the datastore has no WIT keys).
package bundle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	bundlev1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/bundle/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/server/api/apistatus"
	"github.com/sigil-spiffe/sigil/internal/server/api/convert"
)

// Store is the part of the datastore the service uses.
type Store interface {
	GetBundle(ctx context.Context, trustDomain string) (*datastore.Bundle, error)
	ListBundles(ctx context.Context, p datastore.Page) ([]*datastore.Bundle, string, error)
	CountBundles(ctx context.Context) (int, error)
	CreateBundle(ctx context.Context, b *datastore.Bundle) (*datastore.Bundle, error)
	UpdateBundle(ctx context.Context, b *datastore.Bundle) (*datastore.Bundle, error)
	SetBundle(ctx context.Context, b *datastore.Bundle) (*datastore.Bundle, error)
	AppendBundle(ctx context.Context, b *datastore.Bundle) (*datastore.Bundle, error)
	DeleteBundle(ctx context.Context, trustDomain string) error
	// When federated bundles were last fetched (GetFederatedBundle).
	BundleRefreshes(ctx context.Context) (map[string]time.Time, error)

	// Entries federating with a deleted bundle (BatchDeleteFederatedBundle).
	ListEntries(ctx context.Context, f datastore.EntryFilter, p datastore.Page) ([]*datastore.Entry, string, error)
	CountEntries(ctx context.Context, f datastore.EntryFilter) (int, error)
	UpdateEntry(ctx context.Context, e *datastore.Entry, mask *datastore.EntryMask) (*datastore.Entry, error)
	DeleteEntries(ctx context.Context, ids []string) ([]error, error)
}

// Config configures the service.
type Config struct {
	Store       Store
	TrustDomain spiffeid.TrustDomain
	Log         *slog.Logger
}

// Service implements bundlev1.BundleServer.
type Service struct {
	bundlev1.UnimplementedBundleServer

	store Store
	td    spiffeid.TrustDomain
	log   *slog.Logger
}

// New returns the service.
func New(cfg Config) *Service {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{store: cfg.Store, td: cfg.TrustDomain, log: log.With("service", "bundle")}
}

// Register registers the service on g.
func (s *Service) Register(g *grpc.Server) { bundlev1.RegisterBundleServer(g, s) }

// makeErr is the call's error, logged (see apistatus.Error).
func (s *Service) makeErr(code codes.Code, msg string, err error) error {
	return apistatus.Error(s.log, "bundle", code, msg, err)
}

func masked(b *datastore.Bundle, mask *types.BundleMask) *types.Bundle {
	out := convert.BundleToProto(b)
	convert.ApplyBundleMask(out, mask)
	return out
}

// CountBundles counts all bundles, ours included.
func (s *Service) CountBundles(ctx context.Context, _ *bundlev1.CountBundlesRequest) (*bundlev1.CountBundlesResponse, error) {
	// A listing: a read replica may serve it (PostgreSQL ro_connection_string).
	n, err := s.store.CountBundles(datastore.TolerateStale(ctx))
	if err != nil {
		return nil, s.makeErr(codes.Internal, "failed to count bundles", err)
	}
	return &bundlev1.CountBundlesResponse{Count: int32(min(n, int(^uint32(0)>>1)))}, nil
}

// GetBundle returns the bundle of the server's trust domain.
func (s *Service) GetBundle(ctx context.Context, req *bundlev1.GetBundleRequest) (*types.Bundle, error) {
	b, err := s.store.GetBundle(ctx, s.td.Name())
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return nil, s.makeErr(codes.NotFound, "bundle not found", nil)
	case err != nil:
		return nil, s.makeErr(codes.Internal, "failed to fetch bundle", err)
	}
	return masked(b, req.OutputMask), nil
}

// AppendBundle appends authorities to the server's own bundle.
func (s *Service) AppendBundle(ctx context.Context, req *bundlev1.AppendBundleRequest) (*types.Bundle, error) {
	if len(req.JwtAuthorities) == 0 && len(req.X509Authorities) == 0 {
		return nil, s.makeErr(codes.InvalidArgument, "no authorities to append", nil)
	}
	jwts, err := convert.JWTKeysFromProto(req.JwtAuthorities)
	if err != nil {
		return nil, s.makeErr(codes.InvalidArgument, "failed to convert JWT authority", err)
	}
	x509s, err := convert.X509AuthoritiesFromProto(req.X509Authorities)
	if err != nil {
		return nil, s.makeErr(codes.InvalidArgument, "failed to convert X.509 authority", err)
	}
	if _, err := s.store.GetBundle(ctx, s.td.Name()); err != nil {
		if errors.Is(err, datastore.ErrNotFound) {
			return nil, s.makeErr(codes.NotFound, "bundle not found", nil)
		}
		return nil, s.makeErr(codes.Internal, "failed to fetch bundle", err)
	}
	b, err := s.store.AppendBundle(ctx, &datastore.Bundle{TrustDomain: s.td.Name(), X509Authorities: x509s, JWTKeys: jwts})
	if err != nil {
		return nil, s.makeErr(codes.Internal, "failed to append bundle", err)
	}
	s.log.Info("bundle appended", "trust_domain", s.td.Name(), "x509_authorities", len(x509s), "jwt_authorities", len(jwts))
	return masked(b, req.OutputMask), nil
}

// PublishJWTAuthority appends a downstream server's JWT key to our bundle
// and returns all our JWT authorities.
func (s *Service) PublishJWTAuthority(ctx context.Context, req *bundlev1.PublishJWTAuthorityRequest) (*bundlev1.PublishJWTAuthorityResponse, error) {
	if req.JwtAuthority == nil {
		return nil, s.makeErr(codes.InvalidArgument, "missing JWT authority", nil)
	}
	key, err := convert.JWTKeyFromProto(req.JwtAuthority)
	if err != nil {
		return nil, s.makeErr(codes.InvalidArgument, "invalid JWT authority", err)
	}
	b, err := s.store.AppendBundle(ctx, &datastore.Bundle{TrustDomain: s.td.Name(), JWTKeys: []datastore.JWTKey{key}})
	if err != nil {
		return nil, s.makeErr(codes.Internal, "failed to publish JWT key", err)
	}
	s.log.Info("JWT authority published", "key_id", key.KeyID)
	return &bundlev1.PublishJWTAuthorityResponse{JwtAuthorities: convert.JWTKeysToProto(b.JWTKeys)}, nil
}

// ListFederatedBundles lists every bundle except ours; page_size 0 returns
// everything (as SPIRE).
func (s *Service) ListFederatedBundles(ctx context.Context, req *bundlev1.ListFederatedBundlesRequest) (*bundlev1.ListFederatedBundlesResponse, error) {
	var page datastore.Page
	if req.PageSize > 0 {
		page = datastore.Page{Size: int(req.PageSize), Token: req.PageToken}
	}
	bundles, next, err := s.store.ListBundles(datastore.TolerateStale(ctx), page)
	if err != nil {
		if errors.Is(err, datastore.ErrInvalidPage) {
			// The token is the client's text, of any size: not repeated.
			return nil, s.makeErr(codes.InvalidArgument, "could not parse page token", nil)
		}
		return nil, s.makeErr(codes.Internal, "failed to list bundles", err)
	}
	resp := &bundlev1.ListFederatedBundlesResponse{NextPageToken: next}
	for _, b := range bundles {
		if b.TrustDomain == s.td.Name() {
			continue
		}
		resp.Bundles = append(resp.Bundles, masked(b, req.OutputMask))
	}
	return resp, nil
}

// GetFederatedBundle returns the bundle of another trust domain.
func (s *Service) GetFederatedBundle(ctx context.Context, req *bundlev1.GetFederatedBundleRequest) (*types.Bundle, error) {
	td, err := convert.TrustDomainFromNameOrID(req.TrustDomain)
	if err != nil {
		return nil, s.makeErr(codes.InvalidArgument, "trust domain argument is not valid", err)
	}
	if td == s.td {
		return nil, s.makeErr(codes.InvalidArgument, "getting a federated bundle for the server's own trust domain is not allowed", nil)
	}
	b, err := s.store.GetBundle(ctx, td.Name())
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return nil, s.makeErr(codes.NotFound, "bundle not found", nil)
	case err != nil:
		return nil, s.makeErr(codes.Internal, "failed to fetch bundle", err)
	}
	s.sendRefreshedAt(ctx, td)
	return masked(b, req.OutputMask), nil
}

// RefreshedAtHeader is the GetFederatedBundle response header holding when
// the bundle was last fetched from its trust domain's bundle endpoint, in
// Unix seconds.
const RefreshedAtHeader = "sigil-bundle-refreshed-at"

// sendRefreshedAt sets RefreshedAtHeader when the store knows when td's
// bundle was last fetched. It is information, not the answer: a failure
// to read it is logged and the bundle is returned without it.
func (s *Service) sendRefreshedAt(ctx context.Context, td spiffeid.TrustDomain) {
	refreshes, err := s.store.BundleRefreshes(ctx)
	if err != nil {
		s.log.Warn("Failed to read when the federated bundle was last refreshed", "trust_domain", td.Name(), "error", err)
		return
	}
	at, ok := refreshes[td.Name()]
	if !ok || at.IsZero() {
		return
	}
	if err := grpc.SetHeader(ctx, metadata.Pairs(RefreshedAtHeader, strconv.FormatInt(at.Unix(), 10))); err != nil {
		s.log.Debug("Failed to send the federated bundle's refresh time", "trust_domain", td.Name(), "error", err)
	}
}

// BatchCreateFederatedBundle creates bundles of other trust domains.
func (s *Service) BatchCreateFederatedBundle(ctx context.Context, req *bundlev1.BatchCreateFederatedBundleRequest) (*bundlev1.BatchCreateFederatedBundleResponse, error) {
	return &bundlev1.BatchCreateFederatedBundleResponse{
		Results: writeBatch(s, req.Bundle, req.OutputMask,
			func(pb *types.Bundle) (*types.Status, *datastore.Bundle) { return s.createOne(ctx, pb) },
			func(st *types.Status, b *types.Bundle) *bundlev1.BatchCreateFederatedBundleResponse_Result {
				return &bundlev1.BatchCreateFederatedBundleResponse_Result{Status: st, Bundle: b}
			}),
	}, nil
}

// writeBatch writes each of the bundles with one, answering a result for
// each (made by result from its status and, when written, the bundle masked
// by mask). The store tells the entry cache what changed.
func writeBatch[R any](s *Service, bundles []*types.Bundle, mask *types.BundleMask,
	one func(*types.Bundle) (*types.Status, *datastore.Bundle),
	result func(*types.Status, *types.Bundle) R) []R {
	var out []R
	for _, pb := range bundles {
		st, b := one(pb)
		var shown *types.Bundle
		if b != nil {
			shown = masked(b, mask)
		}
		out = append(out, result(st, shown))
	}
	return out
}

// federatedFromProto converts a bundle given to be written (verb: creating,
// updating, setting) as another trust domain's; a status says why it
// cannot be.
func (s *Service) federatedFromProto(pb *types.Bundle, verb string) (*datastore.Bundle, *types.Status) {
	b, err := convert.BundleFromProto(pb)
	if err != nil {
		return nil, apistatus.New(codes.InvalidArgument, "failed to convert bundle", err)
	}
	if b.TrustDomain == s.td.Name() {
		return nil, apistatus.New(codes.InvalidArgument, verb+" a federated bundle for the server's own trust domain is not allowed", nil)
	}
	return b, nil
}

// errNoX509Authorities refuses a federated bundle that could authenticate
// no X509-SVID of its trust domain.
var errNoX509Authorities = errors.New("a federated bundle must have at least one X.509 authority")

// writeFailed is the status of a store error writing a federated bundle:
// a sequence number the store cannot hold is the client's (InvalidArgument),
// anything else Internal.
func (s *Service) writeFailed(b *datastore.Bundle, msg string, err error) *types.Status {
	if errors.Is(err, datastore.ErrOutOfRange) {
		return apistatus.New(codes.InvalidArgument, msg, fmt.Errorf("sequence number %d is out of range", b.SequenceNumber))
	}
	s.log.Error(msg, "trust_domain", b.TrustDomain, "error", err)
	return apistatus.New(codes.Internal, msg, err)
}

func (s *Service) createOne(ctx context.Context, pb *types.Bundle) (*types.Status, *datastore.Bundle) {
	b, st := s.federatedFromProto(pb, "creating")
	if st != nil {
		return st, nil
	}
	if len(b.X509Authorities) == 0 {
		return apistatus.New(codes.InvalidArgument, "failed to convert bundle", errNoX509Authorities), nil
	}
	got, err := s.store.CreateBundle(ctx, b)
	switch {
	case errors.Is(err, datastore.ErrAlreadyExists):
		return apistatus.New(codes.AlreadyExists, "bundle already exists", nil), nil
	case err != nil:
		return s.writeFailed(b, "unable to create bundle", err), nil
	}
	s.log.Info("federated bundle created", "trust_domain", b.TrustDomain)
	return apistatus.OK(), got
}

// BatchUpdateFederatedBundle updates the masked fields (nil = all) of
// existing bundles of other trust domains.
func (s *Service) BatchUpdateFederatedBundle(ctx context.Context, req *bundlev1.BatchUpdateFederatedBundleRequest) (*bundlev1.BatchUpdateFederatedBundleResponse, error) {
	return &bundlev1.BatchUpdateFederatedBundleResponse{
		Results: writeBatch(s, req.Bundle, req.OutputMask,
			func(pb *types.Bundle) (*types.Status, *datastore.Bundle) { return s.updateOne(ctx, pb, req.InputMask) },
			func(st *types.Status, b *types.Bundle) *bundlev1.BatchUpdateFederatedBundleResponse_Result {
				return &bundlev1.BatchUpdateFederatedBundleResponse_Result{Status: st, Bundle: b}
			}),
	}, nil
}

func (s *Service) updateOne(ctx context.Context, pb *types.Bundle, mask *types.BundleMask) (*types.Status, *datastore.Bundle) {
	b, st := s.federatedFromProto(pb, "updating")
	if st != nil {
		return st, nil
	}
	cur, err := s.store.GetBundle(ctx, b.TrustDomain)
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return apistatus.New(codes.NotFound, "bundle not found", nil), nil
	case err != nil:
		return apistatus.New(codes.Internal, "failed to fetch bundle", err), nil
	}
	next := *cur
	if mask == nil || mask.X509Authorities {
		next.X509Authorities = b.X509Authorities
	}
	if mask == nil || mask.JwtAuthorities {
		next.JWTKeys = b.JWTKeys
	}
	if mask == nil || mask.RefreshHint {
		next.RefreshHint = b.RefreshHint
	}
	if mask == nil || mask.SequenceNumber {
		next.SequenceNumber = b.SequenceNumber
	}
	if len(next.X509Authorities) == 0 {
		return apistatus.New(codes.InvalidArgument, "failed to convert bundle", errNoX509Authorities), nil
	}
	got, err := s.store.UpdateBundle(ctx, &next)
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return apistatus.New(codes.NotFound, "bundle not found", nil), nil
	case err != nil:
		return s.writeFailed(&next, "failed to update bundle", err), nil
	}
	s.log.Info("federated bundle updated", "trust_domain", b.TrustDomain)
	return apistatus.OK(), got
}

// BatchSetFederatedBundle creates or replaces bundles of other trust
// domains.
func (s *Service) BatchSetFederatedBundle(ctx context.Context, req *bundlev1.BatchSetFederatedBundleRequest) (*bundlev1.BatchSetFederatedBundleResponse, error) {
	return &bundlev1.BatchSetFederatedBundleResponse{
		Results: writeBatch(s, req.Bundle, req.OutputMask,
			func(pb *types.Bundle) (*types.Status, *datastore.Bundle) { return s.setOne(ctx, pb) },
			func(st *types.Status, b *types.Bundle) *bundlev1.BatchSetFederatedBundleResponse_Result {
				return &bundlev1.BatchSetFederatedBundleResponse_Result{Status: st, Bundle: b}
			}),
	}, nil
}

func (s *Service) setOne(ctx context.Context, pb *types.Bundle) (*types.Status, *datastore.Bundle) {
	b, st := s.federatedFromProto(pb, "setting")
	if st != nil {
		return st, nil
	}
	if len(b.X509Authorities) == 0 {
		return apistatus.New(codes.InvalidArgument, "failed to convert bundle", errNoX509Authorities), nil
	}
	got, err := s.store.SetBundle(ctx, b)
	if err != nil {
		return s.writeFailed(b, "failed to set bundle", err), nil
	}
	s.log.Info("federated bundle set", "trust_domain", b.TrustDomain)
	return apistatus.OK(), got
}

// BatchDeleteFederatedBundle deletes bundles of other trust domains.
// RESTRICT refuses (FailedPrecondition) while entries federate with the
// trust domain; DELETE deletes those entries; DISSOCIATE removes the trust
// domain from their federates_with.
func (s *Service) BatchDeleteFederatedBundle(ctx context.Context, req *bundlev1.BatchDeleteFederatedBundleRequest) (*bundlev1.BatchDeleteFederatedBundleResponse, error) {
	switch req.Mode {
	case bundlev1.BatchDeleteFederatedBundleRequest_RESTRICT,
		bundlev1.BatchDeleteFederatedBundleRequest_DELETE,
		bundlev1.BatchDeleteFederatedBundleRequest_DISSOCIATE:
	default:
		return nil, s.makeErr(codes.InvalidArgument, "failed to parse deletion mode", fmt.Errorf("unknown deletion mode %d", req.Mode))
	}
	resp := &bundlev1.BatchDeleteFederatedBundleResponse{}
	for _, name := range req.TrustDomains {
		st := s.deleteOne(ctx, name, req.Mode)
		resp.Results = append(resp.Results, &bundlev1.BatchDeleteFederatedBundleResponse_Result{Status: st, TrustDomain: name})
	}
	return resp, nil
}

func (s *Service) deleteOne(ctx context.Context, name string, mode bundlev1.BatchDeleteFederatedBundleRequest_Mode) *types.Status {
	td, err := convert.TrustDomainFromNameOrID(name)
	if err != nil {
		return apistatus.New(codes.InvalidArgument, "malformed trust domain", err)
	}
	if td == s.td {
		return apistatus.New(codes.InvalidArgument, "removing the bundle for the server trust domain is not allowed", nil)
	}
	if _, err := s.store.GetBundle(ctx, td.Name()); err != nil {
		if errors.Is(err, datastore.ErrNotFound) {
			return apistatus.New(codes.NotFound, "bundle not found", nil)
		}
		return apistatus.New(codes.Internal, "failed to fetch bundle", err)
	}
	filter := datastore.EntryFilter{ByFederatesWith: []string{td.Name()}, FederatesMatch: datastore.MatchAny}
	switch mode {
	case bundlev1.BatchDeleteFederatedBundleRequest_RESTRICT:
		n, err := s.store.CountEntries(ctx, filter)
		if err != nil {
			return apistatus.New(codes.Internal, "failed to delete federated bundle", err)
		}
		if n > 0 {
			return apistatus.New(codes.FailedPrecondition, "failed to delete federated bundle",
				fmt.Errorf("cannot delete bundle; federated with %d registration entries", n))
		}
	case bundlev1.BatchDeleteFederatedBundleRequest_DELETE, bundlev1.BatchDeleteFederatedBundleRequest_DISSOCIATE:
		entries, _, err := s.store.ListEntries(ctx, filter, datastore.Page{})
		if err != nil {
			return apistatus.New(codes.Internal, "failed to delete federated bundle", err)
		}
		if len(entries) > 0 {
			if err := s.detachEntries(ctx, td.Name(), entries, mode); err != nil {
				return apistatus.New(codes.Internal, "failed to delete federated bundle", err)
			}
		}
	}
	if err := s.store.DeleteBundle(ctx, td.Name()); err != nil {
		if errors.Is(err, datastore.ErrNotFound) {
			return apistatus.New(codes.NotFound, "bundle not found", nil)
		}
		if errors.Is(err, datastore.ErrBundleInUse) {
			// An entry federating with it was written meanwhile.
			return apistatus.New(codes.FailedPrecondition, "failed to delete federated bundle",
				errors.New("cannot delete bundle; registration entries federate with it"))
		}
		return apistatus.New(codes.Internal, "failed to delete federated bundle", err)
	}
	s.log.Info("federated bundle deleted", "trust_domain", td.Name(), "mode", mode.String())
	return apistatus.OK()
}

func (s *Service) detachEntries(ctx context.Context, td string, entries []*datastore.Entry, mode bundlev1.BatchDeleteFederatedBundleRequest_Mode) error {
	if mode == bundlev1.BatchDeleteFederatedBundleRequest_DELETE {
		ids := make([]string, 0, len(entries))
		for _, e := range entries {
			ids = append(ids, e.ID)
		}
		errs, err := s.store.DeleteEntries(ctx, ids)
		if err != nil {
			return fmt.Errorf("deleting entries federated with %q: %w", td, err)
		}
		for i, e := range errs {
			if e != nil && !errors.Is(e, datastore.ErrNotFound) {
				return fmt.Errorf("deleting entry %q: %w", ids[i], e)
			}
		}
		return nil
	}
	for _, e := range entries {
		upd := &datastore.Entry{ID: e.ID, FederatesWith: slices.DeleteFunc(slices.Clone(e.FederatesWith), func(s string) bool { return s == td })}
		if _, err := s.store.UpdateEntry(ctx, upd, &datastore.EntryMask{FederatesWith: true}); err != nil && !errors.Is(err, datastore.ErrNotFound) {
			return fmt.Errorf("dissociating entry %q from %q: %w", e.ID, td, err)
		}
	}
	return nil
}
