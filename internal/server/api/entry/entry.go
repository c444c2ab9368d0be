// Package entry implements the spire-api-sdk Entry service (entry/v1) on
// top of the datastore and the authorization cache (entrycache).
//
// Admin RPCs (Count/List/Get/Batch*) behave as SPIRE's: per-entry
// types.Status results with SPIRE's codes and messages ("OK", "similar
// entry already exists" carrying the existing entry, "entry not found",
// "failed to convert entry: <reason>", ...). Who may call what is decided by
// the endpoints middleware; GetAuthorizedEntries and SyncAuthorizedEntries
// additionally require rpccontext.Caller.Agent and use Caller.ID as the
// agent ID.
//
// # SyncAuthorizedEntries
//
// Default (SPIRE) mode, exactly as SPIRE's server:
//
//  1. The client sends a first request with output_mask (ids must be empty;
//     the mask, when set, must include revision_number).
//  2. If the agent is authorized for at most EntryPageSize entries
//     (default 500) that encode within EntryPageBytes (default 1 MiB), the server
//     sends them all in one response (entries set, more=false) and ends the
//     stream.
//  3. Otherwise the server sends entry_revisions (id, revision_number,
//     created_at) in pages of EntryPageSize, more=true on all but the last.
//  4. The client sends requests with the ids it wants in full. Each request
//     is answered with entries pages of at most EntryPageSize entries and
//     EntryPageBytes (an entry larger than that alone) (more=true on
//     all but the last; a request naming no known id gets one empty
//     response with more=false). Unknown ids are skipped.
//  5. The stream ends when the client closes its send side.
//
// Watch mode (Sigil agents) is selected by the incoming gRPC metadata
// "sigil-sync: watch" on the stream. The server confirms it with the
// response header "sigil-sync: watch" (delivered with the first response;
// a SPIRE server sends no such header). A "round" is steps 2-4 above, and:
//
//   - Step 2 does not end the stream: a round of at most EntryPageSize
//     entries is one response (entries, more=false) and is complete at once.
//   - In a revisions round (step 3), the client ends the round by sending a
//     request with no ids, after its id requests; the server answers it
//     with one empty response (more=false). Id requests are answered in
//     order, so the client knows the round is complete when it has read the
//     answer to its empty request.
//   - Once a round is complete, the server waits until the agent's
//     authorized entries may have changed or any bundle changed, then runs
//     a new round with the output mask of the first request. A round may
//     repeat the previous round's entries (for example when only a bundle
//     changed): clients should then re-fetch bundles. Changes made while a
//     round is in progress produce another round right after it.
//   - Requests with ids received between rounds are answered from the last
//     round's entries. The stream ends when the client closes its send side
//     (the server returns OK) or cancels.
//   - Before every round, and when the agent's X509-SVID expires, the caller
//     is checked again as an agent (Config.AgentValidator: node attested,
//     not banned, certificate serial current): a watch stream outlives
//     the middleware's check at its start, and banning or deleting the agent
//     wakes it. A failed check ends the stream with the validator's error
//     (PermissionDenied with SPIRE's PermissionDeniedDetails reason).
//   - When the stream's context is cancelled with a gRPC status as its
//     cause (the endpoints stopping: codes.Unavailable), the stream ends
//     with that status, so the client reconnects.
//
// A watch client therefore reads: one message with entries and more=false
// (full round), or revisions pages until more=false, then sends its id
// requests (reading each answer until more=false), then sends an empty
// request and reads its empty answer. Then it waits for the next round.
package entry

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/server/api/apistatus"
	"github.com/sigil-spiffe/sigil/internal/server/api/convert"
	"github.com/sigil-spiffe/sigil/internal/server/api/rpccontext"
)

const (
	// DefaultEntryPageSize is SPIRE's sync page size.
	DefaultEntryPageSize = 500
	// MaxEntryPageBytes bounds the encoded entries of one sync response, so
	// that no page comes near gRPC's default 4 MiB receive limit, which
	// sigil-agent and spire-agent keep: 500 entries of 10 kB (forty long DNS
	// names each) would be 5 MB. An entry larger than this is sent alone.
	MaxEntryPageBytes = 1 << 20
	// SyncModeHeader is the metadata key selecting the sync mode.
	SyncModeHeader = "sigil-sync"
	// SyncModeWatch is the SyncModeHeader value turning on watch mode.
	SyncModeWatch = "watch"
)

// Store is the part of the datastore the service uses.
type Store interface {
	CreateEntries(ctx context.Context, entries []*datastore.Entry) ([]datastore.EntryResult, error)
	GetEntry(ctx context.Context, id string) (*datastore.Entry, error)
	ListEntries(ctx context.Context, f datastore.EntryFilter, p datastore.Page) ([]*datastore.Entry, string, error)
	CountEntries(ctx context.Context, f datastore.EntryFilter) (int, error)
	UpdateEntry(ctx context.Context, e *datastore.Entry, mask *datastore.EntryMask) (*datastore.Entry, error)
	DeleteEntries(ctx context.Context, ids []string) ([]error, error)
}

// Cache is the authorization cache (entrycache.Cache).
type Cache interface {
	AuthorizedEntries(ctx context.Context, agentID spiffeid.ID) ([]*datastore.Entry, error)
	Subscribe(agentID spiffeid.ID) (<-chan struct{}, func())
}

// AgentValidator re-checks that an agent may still act as one with the
// X509-SVID its connection presented (endpoints.AgentValidator, the rule of
// the authorization middleware). It returns nil or a gRPC status error.
type AgentValidator interface {
	ValidateAgent(ctx context.Context, id spiffeid.ID, svid *x509.Certificate) error
}

// Config configures the service.
type Config struct {
	Store Store
	Cache Cache
	// AgentValidator re-checks watch-mode sync callers before every round.
	// Nil disables the re-check: a banned or deleted agent then keeps its
	// open watch stream; production servers must set it.
	AgentValidator AgentValidator
	TrustDomain    spiffeid.TrustDomain
	Log            *slog.Logger
	Clock          clock.Clock
	// EntryPageSize is the sync page size (default DefaultEntryPageSize).
	EntryPageSize int
	// EntryPageBytes bounds the encoded entries of one sync response
	// (default MaxEntryPageBytes).
	EntryPageBytes int
}

// Service implements entryv1.EntryServer.
type Service struct {
	entryv1.UnimplementedEntryServer

	store     Store
	cache     Cache
	agents    AgentValidator
	td        spiffeid.TrustDomain
	log       *slog.Logger
	clk       clock.Clock
	pageSize  int
	pageBytes int
}

// New returns the service.
func New(cfg Config) *Service {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ps := cfg.EntryPageSize
	if ps <= 0 {
		ps = DefaultEntryPageSize
	}
	pb := cfg.EntryPageBytes
	if pb <= 0 {
		pb = MaxEntryPageBytes
	}
	return &Service{
		store:     cfg.Store,
		cache:     cfg.Cache,
		agents:    cfg.AgentValidator,
		td:        cfg.TrustDomain,
		log:       log.With("service", "entry"),
		clk:       clock.OrReal(cfg.Clock),
		pageSize:  ps,
		pageBytes: pb,
	}
}

// Register registers the service on g.
func (s *Service) Register(g *grpc.Server) { entryv1.RegisterEntryServer(g, s) }

// makeErr is the call's error, logged (see apistatus.Error).
func (s *Service) makeErr(code codes.Code, msg string, err error) error {
	return apistatus.Error(s.log, "entry", code, msg, err)
}

// filterFields is the filter shape shared by List and Count.
type filterFields struct {
	bySPIFFEID, byParentID *types.SPIFFEID
	bySelectors            *types.SelectorMatch
	byFederatesWith        *types.FederatesWithMatch
	byHint                 *string
	byDownstream           *bool
}

func (s *Service) buildFilter(f filterFields) (datastore.EntryFilter, error) {
	var out datastore.EntryFilter
	if f.byParentID != nil {
		id, err := convert.MemberIDFromProto(s.td, f.byParentID)
		if err != nil {
			return out, s.makeErr(codes.InvalidArgument, "malformed parent ID filter", err)
		}
		out.ByParentID = id.String()
	}
	if f.bySPIFFEID != nil {
		id, err := convert.WorkloadIDFromProto(s.td, f.bySPIFFEID)
		if err != nil {
			return out, s.makeErr(codes.InvalidArgument, "malformed SPIFFE ID filter", err)
		}
		out.BySPIFFEID = id.String()
	}
	if f.bySelectors != nil {
		sels, err := convert.SelectorsFromProtoValidated(f.bySelectors.Selectors)
		if err != nil {
			return out, s.makeErr(codes.InvalidArgument, "malformed selectors filter", err)
		}
		if len(sels) == 0 {
			return out, s.makeErr(codes.InvalidArgument, "malformed selectors filter", errors.New("empty selector set"))
		}
		m, err := matchFromProto(int32(f.bySelectors.Match))
		if err != nil {
			return out, s.makeErr(codes.InvalidArgument, "malformed selectors filter", err)
		}
		out.BySelectors, out.SelectorMatch = sels, m
	}
	if f.byFederatesWith != nil {
		var tds []string
		for _, name := range f.byFederatesWith.TrustDomains {
			td, err := convert.TrustDomainFromNameOrID(name)
			if err != nil {
				return out, s.makeErr(codes.InvalidArgument, "malformed federates with filter", err)
			}
			tds = append(tds, td.Name())
		}
		if len(tds) == 0 {
			return out, s.makeErr(codes.InvalidArgument, "malformed federates with filter", errors.New("empty trust domain set"))
		}
		m, err := matchFromProto(int32(f.byFederatesWith.Match))
		if err != nil {
			return out, s.makeErr(codes.InvalidArgument, "malformed federates with filter", err)
		}
		out.ByFederatesWith, out.FederatesMatch = tds, m
	}
	out.ByHint = f.byHint
	out.ByDownstream = f.byDownstream
	return out, nil
}

func matchFromProto(m int32) (datastore.SelectorMatch, error) {
	switch m {
	case int32(types.SelectorMatch_MATCH_EXACT):
		return datastore.MatchExact, nil
	case int32(types.SelectorMatch_MATCH_SUBSET):
		return datastore.MatchSubset, nil
	case int32(types.SelectorMatch_MATCH_SUPERSET):
		return datastore.MatchSuperset, nil
	case int32(types.SelectorMatch_MATCH_ANY):
		return datastore.MatchAny, nil
	}
	return 0, fmt.Errorf("unknown match behavior %d", m)
}

// filterProto is what the filters of CountEntries and ListEntries share.
type filterProto interface {
	GetBySpiffeId() *types.SPIFFEID
	GetByParentId() *types.SPIFFEID
	GetBySelectors() *types.SelectorMatch
	GetByFederatesWith() *types.FederatesWithMatch
	GetByHint() *wrapperspb.StringValue
	GetByDownstream() *wrapperspb.BoolValue
}

// filterFieldsOf reads a non-nil Count or List filter.
func filterFieldsOf(f filterProto) filterFields {
	ff := filterFields{bySPIFFEID: f.GetBySpiffeId(), byParentID: f.GetByParentId(), bySelectors: f.GetBySelectors(), byFederatesWith: f.GetByFederatesWith()}
	if h := f.GetByHint(); h != nil {
		ff.byHint = &h.Value
	}
	// by_downstream true keeps only downstream entries; false filters
	// nothing, as in SPIRE (whose CLI sends false unless -downstream).
	if f.GetByDownstream().GetValue() {
		ff.byDownstream = &f.GetByDownstream().Value
	}
	return ff
}

// CountEntries counts the entries matching the filter.
func (s *Service) CountEntries(ctx context.Context, req *entryv1.CountEntriesRequest) (*entryv1.CountEntriesResponse, error) {
	var ff filterFields
	if f := req.GetFilter(); f != nil {
		ff = filterFieldsOf(f)
	}
	filter, err := s.buildFilter(ff)
	if err != nil {
		return nil, err
	}
	// A listing: a read replica may serve it (PostgreSQL ro_connection_string).
	n, err := s.store.CountEntries(datastore.TolerateStale(ctx), filter)
	if err != nil {
		return nil, s.makeErr(codes.Internal, "failed to count entries", err)
	}
	return &entryv1.CountEntriesResponse{Count: int32(min(n, int(^uint32(0)>>1)))}, nil
}

// ListEntries lists entries; page_size 0 returns everything (as SPIRE).
func (s *Service) ListEntries(ctx context.Context, req *entryv1.ListEntriesRequest) (*entryv1.ListEntriesResponse, error) {
	var ff filterFields
	if f := req.GetFilter(); f != nil {
		ff = filterFieldsOf(f)
	}
	filter, err := s.buildFilter(ff)
	if err != nil {
		return nil, err
	}
	var page datastore.Page
	if req.PageSize > 0 {
		page = datastore.Page{Size: int(req.PageSize), Token: req.PageToken}
	}
	entries, next, err := s.store.ListEntries(datastore.TolerateStale(ctx), filter, page)
	if err != nil {
		if errors.Is(err, datastore.ErrInvalidPage) {
			// The token is the client's text, of any size: not repeated.
			return nil, s.makeErr(codes.InvalidArgument, "could not parse page token", nil)
		}
		return nil, s.makeErr(codes.Internal, "failed to list entries", err)
	}
	resp := &entryv1.ListEntriesResponse{NextPageToken: next}
	for _, e := range entries {
		pe, err := convert.EntryToProtoMasked(e, req.OutputMask)
		if err != nil {
			s.log.Error("failed to convert stored entry", "entry_id", e.ID, "error", err)
			continue
		}
		resp.Entries = append(resp.Entries, pe)
	}
	return resp, nil
}

// GetEntry returns one entry.
func (s *Service) GetEntry(ctx context.Context, req *entryv1.GetEntryRequest) (*types.Entry, error) {
	if req.Id == "" {
		return nil, s.makeErr(codes.InvalidArgument, "missing ID", nil)
	}
	e, err := s.store.GetEntry(ctx, req.Id)
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return nil, s.makeErr(codes.NotFound, "entry not found", nil)
	case err != nil:
		return nil, s.makeErr(codes.Internal, "failed to fetch entry", err)
	}
	pe, err := convert.EntryToProtoMasked(e, req.OutputMask)
	if err != nil {
		return nil, s.makeErr(codes.Internal, "failed to convert entry", err)
	}
	return pe, nil
}

// BatchCreateEntry creates entries; results keep the request order.
func (s *Service) BatchCreateEntry(ctx context.Context, req *entryv1.BatchCreateEntryRequest) (*entryv1.BatchCreateEntryResponse, error) {
	results := make([]*entryv1.BatchCreateEntryResponse_Result, len(req.Entries))
	var batch []*datastore.Entry
	var batchIdx []int
	for i, pe := range req.Entries {
		e, err := convert.EntryFromProto(s.td, pe, nil)
		if err != nil {
			results[i] = &entryv1.BatchCreateEntryResponse_Result{
				Status: apistatus.New(codes.InvalidArgument, "failed to convert entry", err),
			}
			continue
		}
		batch = append(batch, e)
		batchIdx = append(batchIdx, i)
	}
	created := 0
	if len(batch) > 0 {
		res, err := s.store.CreateEntries(ctx, batch)
		if err == nil && len(res) != len(batch) {
			err = fmt.Errorf("store returned %d results for %d entries", len(res), len(batch))
		}
		if err != nil {
			s.log.Error("failed to create entries", "error", err)
			for _, i := range batchIdx {
				results[i] = &entryv1.BatchCreateEntryResponse_Result{Status: apistatus.New(codes.Internal, "failed to create entry", err)}
			}
		} else {
			for j, r := range res {
				i := batchIdx[j]
				results[i] = s.createResult(ctx, batch[j], r, req.OutputMask)
				if r.Err == nil {
					created++
				}
			}
		}
	}
	if created > 0 {
		s.log.Info("entries created", "count", created)
	}
	return &entryv1.BatchCreateEntryResponse{Results: results}, nil
}

func (s *Service) createResult(ctx context.Context, in *datastore.Entry, r datastore.EntryResult, mask *types.EntryMask) *entryv1.BatchCreateEntryResponse_Result {
	entry, st := r.Entry, apistatus.OK()
	if r.Err != nil {
		if errors.Is(r.Err, datastore.ErrNoFederatedBundle) {
			return &entryv1.BatchCreateEntryResponse_Result{Status: apistatus.New(codes.InvalidArgument, "failed to create entry", noBundleCause(r.Err))}
		}
		if errors.Is(r.Err, datastore.ErrInvalid) {
			return &entryv1.BatchCreateEntryResponse_Result{Status: apistatus.New(codes.InvalidArgument, "failed to create entry", r.Err)}
		}
		if !errors.Is(r.Err, datastore.ErrAlreadyExists) {
			return &entryv1.BatchCreateEntryResponse_Result{Status: apistatus.New(codes.Internal, "failed to create entry", r.Err)}
		}
		similar, err := s.findSimilar(ctx, in)
		if err != nil {
			return &entryv1.BatchCreateEntryResponse_Result{Status: apistatus.New(codes.Internal, "failed to list entries", err)}
		}
		if similar == nil {
			// The ID is taken by a different entry.
			return &entryv1.BatchCreateEntryResponse_Result{Status: apistatus.New(codes.AlreadyExists, "failed to create entry", errors.New("entry ID is already in use"))}
		}
		entry, st = similar, &types.Status{Code: int32(codes.AlreadyExists), Message: "similar entry already exists"}
	}
	pe, err := convert.EntryToProtoMasked(entry, mask)
	if err != nil {
		return &entryv1.BatchCreateEntryResponse_Result{Status: apistatus.New(codes.Internal, "failed to convert entry", err)}
	}
	return &entryv1.BatchCreateEntryResponse_Result{Status: st, Entry: pe}
}

// findSimilar returns the stored entry with the same SPIFFE ID, parent ID
// and selector set as e, or nil.
func (s *Service) findSimilar(ctx context.Context, e *datastore.Entry) (*datastore.Entry, error) {
	found, _, err := s.store.ListEntries(ctx, datastore.EntryFilter{
		BySPIFFEID:    e.SPIFFEID,
		ByParentID:    e.ParentID,
		BySelectors:   e.Selectors,
		SelectorMatch: datastore.MatchExact,
	}, datastore.Page{Size: 1})
	if err != nil {
		return nil, err
	}
	if len(found) == 0 {
		return nil, nil
	}
	return found[0], nil
}

// BatchUpdateEntry updates entries (input_mask nil = all fields).
func (s *Service) BatchUpdateEntry(ctx context.Context, req *entryv1.BatchUpdateEntryRequest) (*entryv1.BatchUpdateEntryResponse, error) {
	results := make([]*entryv1.BatchUpdateEntryResponse_Result, 0, len(req.Entries))
	mask := convert.EntryMaskFromProto(req.InputMask)
	updated := 0
	for _, pe := range req.Entries {
		r := s.updateOne(ctx, pe, req.InputMask, mask, req.OutputMask)
		if r.Status.Code == int32(codes.OK) {
			updated++
		}
		results = append(results, r)
	}
	if updated > 0 {
		s.log.Info("entries updated", "count", updated)
	}
	return &entryv1.BatchUpdateEntryResponse{Results: results}, nil
}

func (s *Service) updateOne(ctx context.Context, pe *types.Entry, inMask *types.EntryMask, mask *datastore.EntryMask, outMask *types.EntryMask) *entryv1.BatchUpdateEntryResponse_Result {
	e, err := convert.EntryFromProto(s.td, pe, inMask)
	if err != nil {
		return &entryv1.BatchUpdateEntryResponse_Result{Status: apistatus.New(codes.InvalidArgument, "failed to convert entry", err)}
	}
	if e.ID == "" {
		return &entryv1.BatchUpdateEntryResponse_Result{Status: apistatus.New(codes.InvalidArgument, "failed to update entry", errors.New("missing entry ID"))}
	}
	got, err := s.store.UpdateEntry(ctx, e, mask)
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return &entryv1.BatchUpdateEntryResponse_Result{Status: apistatus.New(codes.NotFound, "failed to update entry", errors.New("entry not found"))}
	case errors.Is(err, datastore.ErrAlreadyExists):
		return &entryv1.BatchUpdateEntryResponse_Result{Status: apistatus.New(codes.AlreadyExists, "failed to update entry", errors.New("similar entry already exists"))}
	case errors.Is(err, datastore.ErrNoFederatedBundle):
		return &entryv1.BatchUpdateEntryResponse_Result{Status: apistatus.New(codes.InvalidArgument, "failed to update entry", noBundleCause(err))}
	case errors.Is(err, datastore.ErrInvalid):
		return &entryv1.BatchUpdateEntryResponse_Result{Status: apistatus.New(codes.InvalidArgument, "failed to update entry", err)}
	case err != nil:
		s.log.Error("failed to update entry", "entry_id", e.ID, "error", err)
		return &entryv1.BatchUpdateEntryResponse_Result{Status: apistatus.New(codes.Internal, "failed to update entry", err)}
	}
	out, err := convert.EntryToProtoMasked(got, outMask)
	if err != nil {
		return &entryv1.BatchUpdateEntryResponse_Result{Status: apistatus.New(codes.Internal, "failed to convert entry in updateEntry", err)}
	}
	return &entryv1.BatchUpdateEntryResponse_Result{Status: apistatus.OK(), Entry: out}
}

// noBundleCause is the cause shown for a store error matching
// datastore.ErrNoFederatedBundle: SPIRE's "unable to find federated bundle
// <trust domain>", without the store's wrapping.
func noBundleCause(err error) error {
	var nb *datastore.NoFederatedBundleError
	if errors.As(err, &nb) {
		return nb
	}
	return datastore.ErrNoFederatedBundle
}

// BatchDeleteEntry deletes entries by ID.
func (s *Service) BatchDeleteEntry(ctx context.Context, req *entryv1.BatchDeleteEntryRequest) (*entryv1.BatchDeleteEntryResponse, error) {
	results := make([]*entryv1.BatchDeleteEntryResponse_Result, len(req.Ids))
	var ids []string
	var idx []int
	for i, id := range req.Ids {
		if id == "" {
			results[i] = &entryv1.BatchDeleteEntryResponse_Result{Id: id, Status: apistatus.New(codes.InvalidArgument, "missing entry ID", nil)}
			continue
		}
		ids = append(ids, id)
		idx = append(idx, i)
	}
	deleted := 0
	if len(ids) > 0 {
		errs, err := s.store.DeleteEntries(ctx, ids)
		if err == nil && len(errs) != len(ids) {
			err = fmt.Errorf("store returned %d results for %d IDs", len(errs), len(ids))
		}
		for j, id := range ids {
			i := idx[j]
			switch {
			case err != nil:
				results[i] = &entryv1.BatchDeleteEntryResponse_Result{Id: id, Status: apistatus.New(codes.Internal, "failed to delete entry", err)}
			case errs[j] == nil:
				results[i] = &entryv1.BatchDeleteEntryResponse_Result{Id: id, Status: apistatus.OK()}
				deleted++
			case errors.Is(errs[j], datastore.ErrNotFound):
				results[i] = &entryv1.BatchDeleteEntryResponse_Result{Id: id, Status: apistatus.New(codes.NotFound, "entry not found", nil)}
			default:
				results[i] = &entryv1.BatchDeleteEntryResponse_Result{Id: id, Status: apistatus.New(codes.Internal, "failed to delete entry", errs[j])}
			}
		}
		if err != nil {
			s.log.Error("failed to delete entries", "error", err)
		}
	}
	if deleted > 0 {
		s.log.Info("entries deleted", "count", deleted)
	}
	return &entryv1.BatchDeleteEntryResponse{Results: results}, nil
}

func (s *Service) callerAgent(ctx context.Context) (rpccontext.Caller, error) {
	c, ok := rpccontext.CallerFrom(ctx)
	if !ok || !c.Agent || c.ID.IsZero() {
		return rpccontext.Caller{}, s.makeErr(codes.PermissionDenied, "caller is not an attested agent", nil)
	}
	return c, nil
}

// revalidate checks again that the caller of a long-lived stream is an
// agent in good standing.
func (s *Service) revalidate(ctx context.Context, c rpccontext.Caller) error {
	if s.agents == nil {
		return nil
	}
	if err := s.agents.ValidateAgent(ctx, c.ID, c.X509SVID); err != nil {
		s.log.Info("Ending entry watch: agent no longer authorized", "agent_id", c.ID.String(), "code", status.Code(err).String(), "error", status.Convert(err).Message())
		return err
	}
	return nil
}

// authorized returns the caller's authorized entries, masked, sorted by ID.
func (s *Service) authorized(ctx context.Context, agent spiffeid.ID, mask *types.EntryMask) ([]*types.Entry, error) {
	entries, err := s.cache.AuthorizedEntries(ctx, agent)
	if err != nil {
		return nil, s.makeErr(codes.Internal, "failed to fetch entries", err)
	}
	out := make([]*types.Entry, 0, len(entries))
	for _, e := range entries {
		pe, err := convert.EntryToProtoMasked(e, mask)
		if err != nil {
			s.log.Error("failed to convert stored entry", "entry_id", e.ID, "error", err)
			continue
		}
		out = append(out, pe)
	}
	slices.SortFunc(out, func(a, b *types.Entry) int { return strings.Compare(a.Id, b.Id) })
	return out, nil
}

// GetAuthorizedEntries returns the entries the calling agent is authorized
// for.
func (s *Service) GetAuthorizedEntries(ctx context.Context, req *entryv1.GetAuthorizedEntriesRequest) (*entryv1.GetAuthorizedEntriesResponse, error) {
	caller, err := s.callerAgent(ctx)
	if err != nil {
		return nil, err
	}
	entries, err := s.authorized(ctx, caller.ID, req.OutputMask)
	if err != nil {
		return nil, err
	}
	return &entryv1.GetAuthorizedEntriesResponse{Entries: entries}, nil
}

func watchRequested(ctx context.Context) bool {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return false
	}
	for _, v := range md.Get(SyncModeHeader) {
		if strings.EqualFold(strings.TrimSpace(v), SyncModeWatch) {
			return true
		}
	}
	return false
}

// SyncAuthorizedEntries streams the calling agent's authorized entries; see
// the package documentation for the protocol and the watch mode.
func (s *Service) SyncAuthorizedEntries(stream entryv1.Entry_SyncAuthorizedEntriesServer) error {
	ctx := stream.Context()
	caller, err := s.callerAgent(ctx)
	if err != nil {
		return err
	}
	agent := caller.ID
	watch := watchRequested(ctx)
	var sig <-chan struct{}
	if watch {
		// Confirm watch mode to the client (sent with the first response).
		if err := stream.SetHeader(metadata.Pairs(SyncModeHeader, SyncModeWatch)); err != nil {
			return err
		}
		// Subscribe before the first read of the cache so no change
		// between the read and the wait is lost.
		ch, cancel := s.cache.Subscribe(agent)
		defer cancel()
		sig = ch
	}

	first, err := stream.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
	if len(first.Ids) > 0 {
		return s.makeErr(codes.InvalidArgument, "specifying IDs on initial request is not supported", nil)
	}
	if first.OutputMask != nil && !first.OutputMask.RevisionNumber {
		return s.makeErr(codes.InvalidArgument, "revision number cannot be masked", nil)
	}
	mask := first.OutputMask

	if !watch {
		entries, revisions, err := s.syncRound(ctx, stream, agent, mask, nil)
		if err != nil || !revisions {
			return err
		}
		for {
			req, err := stream.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
					return nil
				}
				return err
			}
			if err := s.sendRequested(stream, entries, req.Ids); err != nil {
				return err
			}
		}
	}
	return s.watch(ctx, stream, caller, mask, sig)
}

// ctxEnd is the stream's result once ctx is done: the cancellation cause
// when it is a gRPC status (the endpoints stopping), nil when the client
// cancelled, else the context error as a status.
func ctxEnd(ctx context.Context) error {
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, ctx.Err()) {
		if st, ok := status.FromError(cause); ok {
			return st.Err()
		}
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		return nil
	}
	return status.FromContextError(ctx.Err()).Err()
}

func (s *Service) watch(ctx context.Context, stream entryv1.Entry_SyncAuthorizedEntriesServer, caller rpccontext.Caller, mask *types.EntryMask, sig <-chan struct{}) error {
	agent := caller.ID
	reqs := make(chan *entryv1.SyncAuthorizedEntriesRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	endErr := func(err error) error {
		if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
			return nil
		}
		return err
	}

	// The SVID's expiry is a change no one signals.
	var expired <-chan time.Time
	if caller.X509SVID != nil {
		expired = s.clk.After(max(caller.X509SVID.NotAfter.Sub(s.clk.Now()), 0) + time.Second)
	}
	// Re-checking before the first round too closes the gap between the
	// middleware's check and Subscribe.
	round := func() ([]*types.Entry, bool, error) {
		if err := s.revalidate(ctx, caller); err != nil {
			return nil, false, err
		}
		return s.syncRound(ctx, stream, agent, mask, sig)
	}

	// entries is the round's list, kept only while a revisions round
	// waits for the client's id requests: an idle stream holds none of
	// it (thousands of streams stay open between changes).
	entries, awaitingEnd, err := round()
	if err != nil {
		return err
	}
	if !awaitingEnd {
		entries = nil
	}
	for {
		if awaitingEnd {
			// A revisions round: answer id requests until the client's
			// empty request ends the round.
			select {
			case req := <-reqs:
				if err := s.sendRequested(stream, entries, req.Ids); err != nil {
					return err
				}
				if len(req.Ids) == 0 {
					awaitingEnd = false
					entries = nil
				}
			case <-expired:
				expired = nil
				if err := s.revalidate(ctx, caller); err != nil {
					return err
				}
			case err := <-recvErr:
				return endErr(err)
			case <-ctx.Done():
				return ctxEnd(ctx)
			}
			continue
		}
		select {
		case <-sig:
			entries, awaitingEnd, err = round()
			if err != nil {
				return err
			}
			if !awaitingEnd {
				entries = nil
			}
		case <-expired:
			expired = nil
			if err := s.revalidate(ctx, caller); err != nil {
				return err
			}
		case req := <-reqs:
			// Ids outside a revisions round: answered from the
			// agent's authorized entries as they are now.
			current, err := s.authorized(ctx, agent, mask)
			if err != nil {
				return err
			}
			if err := s.sendRequested(stream, current, req.Ids); err != nil {
				return err
			}
		case err := <-recvErr:
			return endErr(err)
		case <-ctx.Done():
			return ctxEnd(ctx)
		}
	}
}

// syncRound sends the agent's authorized entries in full when they fit in
// one page (at most pageSize entries and pageBytes encoded), else their
// revisions in pages (as SPIRE's server does for more than a page of
// entries: SPIRE's agent reads a complete list as one message, and follows
// revisions whatever their number). It returns the entries (sorted
// by ID, for id requests) and whether revisions were sent. A pending
// signal on sig is drained first: this round covers it.
func (s *Service) syncRound(ctx context.Context, stream entryv1.Entry_SyncAuthorizedEntriesServer, agent spiffeid.ID, mask *types.EntryMask, sig <-chan struct{}) ([]*types.Entry, bool, error) {
	if sig != nil {
		select {
		case <-sig:
		default:
		}
	}
	entries, err := s.authorized(ctx, agent, mask)
	if err != nil {
		return nil, false, err
	}
	if len(entries) <= s.pageSize && s.fits(entries) {
		return entries, false, stream.Send(&entryv1.SyncAuthorizedEntriesResponse{Entries: entries})
	}
	for i := 0; i < len(entries); i += s.pageSize {
		end := min(i+s.pageSize, len(entries))
		revs := make([]*entryv1.EntryRevision, 0, end-i)
		for _, e := range entries[i:end] {
			revs = append(revs, &entryv1.EntryRevision{Id: e.Id, RevisionNumber: e.RevisionNumber, CreatedAt: e.CreatedAt})
		}
		if err := stream.Send(&entryv1.SyncAuthorizedEntriesResponse{EntryRevisions: revs, More: end < len(entries)}); err != nil {
			return nil, false, err
		}
	}
	return entries, true, nil
}

// fits reports whether entries encode within pageBytes (as one response's
// entries field).
func (s *Service) fits(entries []*types.Entry) bool {
	n := 0
	for _, e := range entries {
		if n += entryWireSize(e); n > s.pageBytes {
			return false
		}
	}
	return true
}

// entryWireSize is the bytes an entry adds to a response: its encoding
// plus the field's tag and length prefix.
func entryWireSize(e *types.Entry) int {
	n := proto.Size(e)
	return n + protowire.SizeTag(1) + protowire.SizeVarint(uint64(n))
}

// sendRequested pages back the requested entries found in entries (sorted
// by ID): at most pageSize entries and pageBytes encoded per page (an
// entry larger than that alone); the last page has more=false (an empty
// page when none match).
func (s *Service) sendRequested(stream entryv1.Entry_SyncAuthorizedEntriesServer, entries []*types.Entry, ids []string) error {
	ids = slices.Clone(ids)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	page := make([]*types.Entry, 0, min(len(ids), s.pageSize))
	bytes := 0
	for _, id := range ids {
		i, found := slices.BinarySearchFunc(entries, id, func(e *types.Entry, id string) int { return strings.Compare(e.Id, id) })
		if !found {
			continue
		}
		size := entryWireSize(entries[i])
		if len(page) == s.pageSize || (len(page) > 0 && bytes+size > s.pageBytes) {
			if err := stream.Send(&entryv1.SyncAuthorizedEntriesResponse{Entries: page, More: true}); err != nil {
				return err
			}
			page = make([]*types.Entry, 0, s.pageSize)
			bytes = 0
		}
		page = append(page, entries[i])
		bytes += size
	}
	return stream.Send(&entryv1.SyncAuthorizedEntriesResponse{Entries: page})
}
