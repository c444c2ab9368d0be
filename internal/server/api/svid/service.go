// Package svid implements spire-api-sdk's svid/v1 SVID service: X509- and
// JWT-SVIDs for agents' authorized entries, minting for admins, and
// intermediate CAs for downstream (nested) servers.
package svid

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	svidv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/svid/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/ca"
	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/server/api/apistatus"
	"github.com/sigil-spiffe/sigil/internal/server/api/convert"
	"github.com/sigil-spiffe/sigil/internal/server/api/rpccontext"
)

// MaxBatchSize bounds the params of one BatchNewX509SVID call.
const MaxBatchSize = 1000

// Signer is the subset of the CA manager the service uses.
type Signer interface {
	SignX509SVID(ctx context.Context, p ca.X509SVIDParams) ([]*x509.Certificate, error)
	SignJWTSVID(ctx context.Context, p ca.JWTSVIDParams) (string, error)
	SignDownstreamX509CA(ctx context.Context, p ca.DownstreamX509CAParams) ([]*x509.Certificate, error)
	X509Authorities() []*x509.Certificate
}

// EntryAuthorizer returns the entries an agent is authorized for
// (internal/server/entrycache).
type EntryAuthorizer interface {
	AuthorizedEntries(ctx context.Context, agentID spiffeid.ID) ([]*datastore.Entry, error)
}

// EntryLookup is optionally implemented by Config.Entries
// (internal/server/entrycache's Cache does): the entry entryID when agentID
// is authorized for it, nil (and no error) when it does not exist or is
// not authorized. It must apply the same rule as AuthorizedEntries. When
// available, BatchNewX509SVID and NewJWTSVID look up the entries they are
// asked for instead of computing the agent's whole authorized set.
type EntryLookup interface {
	AuthorizedEntry(ctx context.Context, agentID spiffeid.ID, entryID string) (*datastore.Entry, error)
}

// EntryLister finds the caller's downstream entries (for their TTL).
type EntryLister interface {
	ListEntries(ctx context.Context, f datastore.EntryFilter, p datastore.Page) ([]*datastore.Entry, string, error)
}

// Config configures the service.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	CA          Signer
	Entries     EntryAuthorizer
	// Store is optional: when set, NewDownstreamX509CA uses the X509-SVID
	// TTL of the caller's downstream entry, as SPIRE does.
	Store EntryLister
	Log   *slog.Logger
}

// Service implements svidv1.SVIDServer.
type Service struct {
	svidv1.UnsafeSVIDServer

	td      spiffeid.TrustDomain
	ca      Signer
	entries EntryAuthorizer
	lookup  EntryLookup // nil when Entries does not implement it
	store   EntryLister
	log     *slog.Logger
}

var _ svidv1.SVIDServer = (*Service)(nil)

// New returns the service.
func New(cfg Config) (*Service, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("svid service: trust domain is required")
	}
	if cfg.CA == nil || cfg.Entries == nil {
		return nil, errors.New("svid service: CA and entry authorizer are required")
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	lookup, _ := cfg.Entries.(EntryLookup)
	return &Service{td: cfg.TrustDomain, ca: cfg.CA, entries: cfg.Entries, lookup: lookup, store: cfg.Store, log: log.With("service", "svid.v1")}, nil
}

// Register registers the service on r.
func (s *Service) Register(r grpc.ServiceRegistrar) { svidv1.RegisterSVIDServer(r, s) }

// MintX509SVID signs an X509-SVID for the SPIFFE ID in the CSR's URI SAN.
func (s *Service) MintX509SVID(ctx context.Context, req *svidv1.MintX509SVIDRequest) (*svidv1.MintX509SVIDResponse, error) {
	if len(req.GetCsr()) == 0 {
		return nil, s.err(ctx, codes.InvalidArgument, "missing CSR", nil)
	}
	if req.GetTtl() < 0 {
		return nil, s.err(ctx, codes.InvalidArgument, "ttl cannot be negative", nil)
	}
	csr, err := ca.ParseCSR(req.GetCsr())
	if err != nil {
		return nil, s.err(ctx, codes.InvalidArgument, csrFailure(err), err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, s.err(ctx, codes.InvalidArgument, "failed to verify CSR signature", err)
	}
	switch {
	case len(csr.URIs) == 0:
		return nil, s.err(ctx, codes.InvalidArgument, "CSR URI SAN is required", nil)
	case len(csr.URIs) > 1:
		return nil, s.err(ctx, codes.InvalidArgument, "only one URI SAN is expected", nil)
	}
	id, err := spiffeid.FromURI(csr.URIs[0])
	if err == nil {
		err = convert.CheckID(id)
	}
	if err != nil {
		return nil, s.err(ctx, codes.InvalidArgument, "CSR URI SAN is not a valid SPIFFE ID", err)
	}
	if err := s.checkWorkloadID(id); err != nil {
		return nil, s.err(ctx, codes.InvalidArgument, "CSR URI SAN is invalid", err)
	}
	if id.String() != csr.URIs[0].String() {
		return nil, s.err(ctx, codes.InvalidArgument, "CSR URI SAN is malformed", fmt.Errorf("%s is not normalized", clip.Quote(csr.URIs[0].String())))
	}
	for _, dns := range csr.DNSNames {
		if err := convert.ValidateDNSName(dns); err != nil {
			return nil, s.err(ctx, codes.InvalidArgument, "CSR DNS name is not valid", err)
		}
	}
	chain, err := s.ca.SignX509SVID(ctx, ca.X509SVIDParams{
		SPIFFEID:  id,
		PublicKey: csr.PublicKey,
		TTL:       time.Duration(req.GetTtl()) * time.Second,
		DNSNames:  csr.DNSNames,
		Subject:   csr.Subject,
	})
	if err != nil || len(chain) == 0 {
		return nil, s.err(ctx, codes.Internal, "failed to sign X509-SVID", errOrEmpty(err))
	}
	s.log.InfoContext(ctx, "Minted X509-SVID", "spiffe_id", id.String(), "serial", chain[0].SerialNumber.String())
	return &svidv1.MintX509SVIDResponse{Svid: x509SVIDToProto(id, chain)}, nil
}

// MintJWTSVID signs a JWT-SVID for any workload ID of the trust domain.
func (s *Service) MintJWTSVID(ctx context.Context, req *svidv1.MintJWTSVIDRequest) (*svidv1.MintJWTSVIDResponse, error) {
	id, err := convert.IDFromProto(req.GetId())
	if err == nil {
		err = s.checkWorkloadID(id)
	}
	if err != nil {
		return nil, s.err(ctx, codes.InvalidArgument, "invalid SPIFFE ID", err)
	}
	if req.GetTtl() < 0 {
		return nil, s.err(ctx, codes.InvalidArgument, "ttl cannot be negative", nil)
	}
	svid, err := s.mintJWT(ctx, id, req.GetAudience(), req.GetTtl())
	if err != nil {
		return nil, err
	}
	return &svidv1.MintJWTSVIDResponse{Svid: svid}, nil
}

// BatchNewX509SVID signs X509-SVIDs for entries the calling agent is
// authorized for. Failures are reported per param, in order.
func (s *Service) BatchNewX509SVID(ctx context.Context, req *svidv1.BatchNewX509SVIDRequest) (*svidv1.BatchNewX509SVIDResponse, error) {
	if len(req.GetParams()) == 0 {
		return nil, s.err(ctx, codes.InvalidArgument, "missing parameters", nil)
	}
	if len(req.GetParams()) > MaxBatchSize {
		return nil, s.err(ctx, codes.InvalidArgument, fmt.Sprintf("too many parameters (max %d)", MaxBatchSize), nil)
	}
	find, err := s.entryFinder(ctx, len(req.GetParams()))
	if err != nil {
		return nil, err
	}
	resp := &svidv1.BatchNewX509SVIDResponse{Results: make([]*svidv1.BatchNewX509SVIDResponse_Result, 0, len(req.GetParams()))}
	for _, p := range req.GetParams() {
		resp.Results = append(resp.Results, s.newX509SVID(ctx, p, find))
	}
	return resp, nil
}

func (s *Service) newX509SVID(ctx context.Context, p *svidv1.NewX509SVIDParams, find entryFinder) *svidv1.BatchNewX509SVIDResponse_Result {
	fail := func(code codes.Code, msg string, cause error) *svidv1.BatchNewX509SVIDResponse_Result {
		return &svidv1.BatchNewX509SVIDResponse_Result{Status: s.status(ctx, code, msg, cause)}
	}
	switch {
	case p.GetEntryId() == "":
		return fail(codes.InvalidArgument, "missing entry ID", nil)
	case len(p.GetCsr()) == 0:
		return fail(codes.InvalidArgument, "missing CSR", nil)
	}
	entry, err := find(ctx, p.GetEntryId())
	switch {
	case err != nil:
		return fail(codes.Internal, "failed to fetch registration entries", err)
	case entry == nil:
		return fail(codes.NotFound, "entry not found or not authorized", nil)
	}
	csr, err := ca.ParseCSR(p.GetCsr())
	if err != nil {
		return fail(codes.InvalidArgument, csrFailure(err), err)
	}
	if err := csr.CheckSignature(); err != nil {
		return fail(codes.InvalidArgument, "invalid CSR signature", err)
	}
	id, err := s.memberID(entry.SPIFFEID)
	if err != nil {
		return fail(codes.Internal, "entry has malformed SPIFFE ID", err)
	}
	chain, err := s.ca.SignX509SVID(ctx, ca.X509SVIDParams{
		SPIFFEID:  id,
		PublicKey: csr.PublicKey,
		TTL:       time.Duration(entry.X509SVIDTTL) * time.Second,
		DNSNames:  entry.DNSNames,
	})
	if err != nil || len(chain) == 0 {
		return fail(codes.Internal, "failed to sign X509-SVID", errOrEmpty(err))
	}
	return &svidv1.BatchNewX509SVIDResponse_Result{
		Status: apistatus.OK(),
		Svid:   x509SVIDToProto(id, chain),
	}
}

// NewJWTSVID signs a JWT-SVID for an entry the calling agent is authorized for.
func (s *Service) NewJWTSVID(ctx context.Context, req *svidv1.NewJWTSVIDRequest) (*svidv1.NewJWTSVIDResponse, error) {
	find, err := s.entryFinder(ctx, 1)
	if err != nil {
		return nil, err
	}
	entry, err := find(ctx, req.GetEntryId())
	switch {
	case err != nil:
		return nil, s.err(ctx, codes.Internal, "failed to fetch registration entries", err)
	case entry == nil:
		return nil, s.err(ctx, codes.NotFound, "entry not found or not authorized", nil)
	}
	id, err := s.memberID(entry.SPIFFEID)
	if err != nil {
		return nil, s.err(ctx, codes.InvalidArgument, "invalid SPIFFE ID", err)
	}
	svid, err := s.mintJWT(ctx, id, req.GetAudience(), entry.JWTSVIDTTL)
	if err != nil {
		return nil, err
	}
	return &svidv1.NewJWTSVIDResponse{Svid: svid}, nil
}

// NewDownstreamX509CA signs an intermediate CA for a downstream server whose
// SVID matches a downstream entry.
func (s *Service) NewDownstreamX509CA(ctx context.Context, req *svidv1.NewDownstreamX509CARequest) (*svidv1.NewDownstreamX509CAResponse, error) {
	caller, ok := rpccontext.CallerFrom(ctx)
	if !ok || !caller.Downstream || caller.ID.IsZero() {
		return nil, s.err(ctx, codes.Internal, "caller is not a downstream workload", nil)
	}
	if len(req.GetCsr()) == 0 {
		return nil, s.err(ctx, codes.InvalidArgument, "missing CSR", nil)
	}
	csr, err := ca.ParseCSR(req.GetCsr())
	if err != nil {
		return nil, s.err(ctx, codes.InvalidArgument, csrFailure(err), err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, s.err(ctx, codes.InvalidArgument, "invalid CSR signature", err)
	}
	if req.GetPreferredTtl() < 0 {
		return nil, s.err(ctx, codes.InvalidArgument, "preferred ttl cannot be negative", nil)
	}
	ttl := time.Duration(req.GetPreferredTtl()) * time.Second
	if s.store != nil {
		down := true
		es, _, err := s.store.ListEntries(ctx, datastore.EntryFilter{BySPIFFEID: caller.ID.String(), ByDownstream: &down}, datastore.Page{})
		if err != nil {
			return nil, s.err(ctx, codes.Internal, "failed to fetch downstream entries", err)
		}
		if len(es) > 0 && es[0].X509SVIDTTL > 0 {
			ttl = time.Duration(es[0].X509SVIDTTL) * time.Second
		}
	}
	chain, err := s.ca.SignDownstreamX509CA(ctx, ca.DownstreamX509CAParams{PublicKey: csr.PublicKey, TTL: ttl})
	if err != nil || len(chain) == 0 {
		return nil, s.err(ctx, codes.Internal, "failed to sign downstream X.509 CA", errOrEmpty(err))
	}
	resp := &svidv1.NewDownstreamX509CAResponse{}
	for _, c := range chain {
		resp.CaCertChain = append(resp.CaCertChain, c.Raw)
	}
	for _, c := range s.ca.X509Authorities() {
		resp.X509Authorities = append(resp.X509Authorities, c.Raw)
	}
	s.log.InfoContext(ctx, "Signed downstream X.509 CA", "caller_id", caller.ID.String(), "serial", chain[0].SerialNumber.String())
	return resp, nil
}

func (s *Service) mintJWT(ctx context.Context, id spiffeid.ID, audience []string, ttl int32) (*types.JWTSVID, error) {
	if len(audience) == 0 {
		return nil, s.err(ctx, codes.InvalidArgument, "at least one audience is required", nil)
	}
	for _, a := range audience {
		if a == "" {
			return nil, s.err(ctx, codes.InvalidArgument, "audience must not be empty", nil)
		}
	}
	token, err := s.ca.SignJWTSVID(ctx, ca.JWTSVIDParams{SPIFFEID: id, Audience: audience, TTL: time.Duration(ttl) * time.Second})
	if err != nil {
		return nil, s.err(ctx, codes.Internal, "failed to sign JWT-SVID", err)
	}
	iat, exp, err := tokenTimes(token)
	if err != nil {
		return nil, s.err(ctx, codes.Internal, "failed to get JWT-SVID expiry", err)
	}
	return &types.JWTSVID{Token: token, Id: convert.IDToProto(id), ExpiresAt: exp.Unix(), IssuedAt: iat.Unix()}, nil
}

// entryFinder returns an entry of the calling agent's authorized set by ID
// (nil when absent or not authorized).
type entryFinder func(ctx context.Context, entryID string) (*datastore.Entry, error)

// maxLookups is the largest number of entries a call looks up one by one;
// a larger batch computes the authorized set once. (A lookup for an agent
// not yet in the cache reads its node from the store, so per-entry lookups
// are bounded.)
const maxLookups = 64

// entryFinder returns the finder for the calling agent, which will look up
// n entries: per-entry lookups when the authorizer supports them and n is
// at most maxLookups (no computation of the whole set per call), else the
// authorized set, computed once for the call.
func (s *Service) entryFinder(ctx context.Context, n int) (entryFinder, error) {
	caller, ok := rpccontext.CallerFrom(ctx)
	if !ok || caller.ID.IsZero() {
		return nil, s.err(ctx, codes.Internal, "caller ID missing from request context", nil)
	}
	if s.lookup != nil && n <= maxLookups {
		return func(ctx context.Context, entryID string) (*datastore.Entry, error) {
			return s.lookup.AuthorizedEntry(ctx, caller.ID, entryID)
		}, nil
	}
	es, err := s.entries.AuthorizedEntries(ctx, caller.ID)
	if err != nil {
		return nil, s.err(ctx, codes.Internal, "failed to fetch registration entries", err)
	}
	m := make(map[string]*datastore.Entry, len(es))
	for _, e := range es {
		m[e.ID] = e
	}
	return func(_ context.Context, entryID string) (*datastore.Entry, error) { return m[entryID], nil }, nil
}

// memberID parses a stored SPIFFE ID and checks it belongs to our trust domain.
func (s *Service) memberID(raw string) (spiffeid.ID, error) {
	id, err := spiffeid.FromString(raw)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if !id.MemberOf(s.td) {
		return spiffeid.ID{}, fmt.Errorf("%q is not a member of trust domain %q", id, s.td)
	}
	return id, nil
}

func (s *Service) checkWorkloadID(id spiffeid.ID) error { return convert.VerifyWorkloadID(s.td, id) }

func (s *Service) err(ctx context.Context, code codes.Code, msg string, cause error) error {
	return apistatus.Fail(ctx, s.log, code, msg, cause)
}

func (s *Service) status(ctx context.Context, code codes.Code, msg string, cause error) *types.Status {
	return apistatus.FailItem(ctx, s.log, code, msg, cause)
}

// csrFailure is the message of a CSR that ca.ParseCSR refused: its key is
// outside the CA's key policy, or it is malformed.
func csrFailure(err error) string {
	if errors.Is(err, ca.ErrKeyNotAllowed) {
		return "CSR key refused"
	}
	return "malformed CSR"
}

func errOrEmpty(err error) error {
	if err != nil {
		return err
	}
	return errors.New("CA returned an empty chain")
}

var jwtAlgs = []jose.SignatureAlgorithm{
	jose.ES256, jose.ES384, jose.ES512, jose.RS256, jose.RS384, jose.RS512,
	jose.PS256, jose.PS384, jose.PS512, jose.EdDSA,
}

// tokenTimes reads iat and exp from a JWT the CA just signed.
func tokenTimes(token string) (iat, exp time.Time, err error) {
	t, err := jwt.ParseSigned(token, jwtAlgs)
	if err != nil {
		return time.Time{}, time.Time{}, err
	}
	var c jwt.Claims
	if err := t.UnsafeClaimsWithoutVerification(&c); err != nil {
		return time.Time{}, time.Time{}, err
	}
	if c.Expiry == nil {
		return time.Time{}, time.Time{}, errors.New("token has no exp claim")
	}
	exp = c.Expiry.Time()
	if c.IssuedAt != nil {
		iat = c.IssuedAt.Time()
	}
	return iat, exp, nil
}

// MintWITSVID is not supported: Sigil does not issue WIT-SVIDs.
func (s *Service) MintWITSVID(context.Context, *svidv1.MintWITSVIDRequest) (*svidv1.MintWITSVIDResponse, error) {
	return nil, status.Error(codes.Unimplemented, "WIT-SVIDs are not supported")
}

// BatchNewWITSVID is not supported: Sigil does not issue WIT-SVIDs.
func (s *Service) BatchNewWITSVID(context.Context, *svidv1.BatchNewWITSVIDRequest) (*svidv1.BatchNewWITSVIDResponse, error) {
	return nil, status.Error(codes.Unimplemented, "WIT-SVIDs are not supported")
}
