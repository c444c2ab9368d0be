package workloadapi

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/agent/endpoints"
	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/peercred"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

const securityHeader = "workload.spiffe.io"

type handler struct {
	workloadpb.UnimplementedSpiffeWorkloadAPIServer
	s   *Service
	der *derCache
}

var errNoIdentity = status.Error(codes.PermissionDenied, "no identity issued")

// caller checks the security header, then attests the caller (once per
// call, through the agent endpoints) and returns its selectors.
func (h *handler) caller(ctx context.Context) (selector.Set, peercred.Cred, error) {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok || len(md[securityHeader]) != 1 || md[securityHeader][0] != "true" {
		return nil, peercred.Cred{}, status.Error(codes.InvalidArgument, "security header missing from request")
	}
	c, err := endpoints.Attest(ctx)
	if err != nil {
		return nil, peercred.Cred{}, err
	}
	return c.Selectors, c.Cred, nil
}

func (h *handler) FetchX509SVID(_ *workloadpb.X509SVIDRequest, stream grpc.ServerStreamingServer[workloadpb.X509SVIDResponse]) error {
	ctx := stream.Context()
	set, cred, err := h.caller(ctx)
	if err != nil {
		return err
	}
	sub := h.s.cfg.Cache.Subscribe(set)
	defer sub.Close()

	var (
		sent bool
		wait <-chan time.Time
		last *workloadpb.X509SVIDResponse
	)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-wait:
			return status.Error(codes.Unavailable, "no X509-SVID has been issued yet for the caller's entries")
		case u := <-sub.Updates():
			if len(u.Entries) == 0 {
				return errNoIdentity
			}
			if len(u.Identities) == 0 {
				if sent {
					return status.Error(codes.Unavailable, "the caller's X509-SVIDs have expired and none has been issued since")
				}
				if wait == nil {
					wait = h.s.clk.After(h.s.cfg.IdentityWait)
				}
				continue
			}
			wait = nil
			resp, err := h.composeX509SVIDResponse(u)
			if err != nil {
				h.s.log.Error("Cannot build X509-SVID response", "pid", cred.PID, "error", err)
				return status.Errorf(codes.Unavailable, "could not serialize response: %v", err)
			}
			if last != nil && proto.Equal(last, resp) {
				continue
			}
			if err := stream.Send(resp); err != nil {
				return err
			}
			last, sent = resp, true
		}
	}
}

func (h *handler) composeX509SVIDResponse(u *cache.WorkloadUpdate) (*workloadpb.X509SVIDResponse, error) {
	resp := &workloadpb.X509SVIDResponse{
		Svids:            make([]*workloadpb.X509SVID, 0, len(u.Identities)),
		FederatedBundles: make(map[string][]byte, len(u.FederatedBundles)),
	}
	var own []byte
	if u.Bundle != nil {
		own = h.der.bundle(u.Bundle.TrustDomain(), u.Bundle.X509Authorities())
	}
	for _, id := range uniqueHints(h.s.log, u.Identities, func(i cache.Identity) *cache.Entry { return i.Entry }) {
		chain, key, err := h.der.svid(id)
		if err != nil {
			return nil, err
		}
		resp.Svids = append(resp.Svids, &workloadpb.X509SVID{
			SpiffeId:    id.Entry.SPIFFEID.String(),
			X509Svid:    chain,
			X509SvidKey: key,
			Bundle:      own,
			Hint:        id.Entry.Hint,
		})
	}
	for td, b := range u.FederatedBundles {
		resp.FederatedBundles[td.IDString()] = h.der.bundle(td, b.X509Authorities())
	}
	return resp, nil
}

func concatDER(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, c.Raw...)
	}
	return out
}

// bundlesFor returns the bundles a caller may see: ours plus the federated
// bundles of its entries. An identity-less caller with
// AllowUnauthenticatedVerifiers federates with nothing: it gets ours only,
// as in SPIRE (trusting a federated domain is a property of an entry). ok
// is false when the caller has no identity and is not allowed without one.
func (h *handler) bundlesFor(u *cache.WorkloadUpdate) (map[spiffeid.TrustDomain]*spiffebundle.Bundle, bool) {
	if len(u.Entries) == 0 && !h.s.cfg.AllowUnauthenticatedVerifiers {
		return nil, false
	}
	out := make(map[spiffeid.TrustDomain]*spiffebundle.Bundle, len(u.FederatedBundles)+1)
	for td, b := range u.FederatedBundles {
		out[td] = b
	}
	if u.Bundle != nil {
		out[u.Bundle.TrustDomain()] = u.Bundle
	}
	return out, true
}

func (h *handler) FetchX509Bundles(_ *workloadpb.X509BundlesRequest, stream grpc.ServerStreamingServer[workloadpb.X509BundlesResponse]) error {
	return streamBundles(h, stream, func(bundles map[spiffeid.TrustDomain]*spiffebundle.Bundle) (*workloadpb.X509BundlesResponse, error) {
		resp := &workloadpb.X509BundlesResponse{Bundles: make(map[string][]byte, len(bundles))}
		for td, b := range bundles {
			resp.Bundles[td.IDString()] = h.der.bundle(td, b.X509Authorities())
		}
		return resp, nil
	})
}

func (h *handler) FetchJWTBundles(_ *workloadpb.JWTBundlesRequest, stream grpc.ServerStreamingServer[workloadpb.JWTBundlesResponse]) error {
	return streamBundles(h, stream, func(bundles map[spiffeid.TrustDomain]*spiffebundle.Bundle) (*workloadpb.JWTBundlesResponse, error) {
		resp := &workloadpb.JWTBundlesResponse{Bundles: make(map[string][]byte, len(bundles))}
		for td, b := range bundles {
			jwks, err := jwtbundle.FromJWTAuthorities(td, b.JWTAuthorities()).Marshal()
			if err != nil {
				return nil, fmt.Errorf("marshal JWT bundle of %q: %w", td, err)
			}
			resp.Bundles[td.IDString()] = jwks
		}
		return resp, nil
	})
}

// streamBundles serves a bundle stream: a response at once, then one each
// time the response would differ.
func streamBundles[R any, PR interface {
	*R
	proto.Message
}](h *handler, stream grpc.ServerStreamingServer[R], compose func(map[spiffeid.TrustDomain]*spiffebundle.Bundle) (PR, error)) error {
	ctx := stream.Context()
	set, cred, err := h.caller(ctx)
	if err != nil {
		return err
	}
	sub := h.s.cfg.Cache.Subscribe(set)
	defer sub.Close()
	var last PR
	for {
		select {
		case <-ctx.Done():
			return nil
		case u := <-sub.Updates():
			bundles, ok := h.bundlesFor(u)
			if !ok {
				return errNoIdentity
			}
			resp, err := compose(bundles)
			if err != nil {
				h.s.log.Error("Cannot build bundles response", "pid", cred.PID, "error", err)
				return status.Errorf(codes.Unavailable, "could not serialize response: %v", err)
			}
			if last != nil && proto.Equal(last, resp) {
				continue
			}
			if err := stream.Send(resp); err != nil {
				return err
			}
			last = resp
		}
	}
}

func (h *handler) FetchJWTSVID(ctx context.Context, req *workloadpb.JWTSVIDRequest) (*workloadpb.JWTSVIDResponse, error) {
	if len(req.Audience) == 0 {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	for _, a := range req.Audience {
		if a == "" {
			return nil, status.Error(codes.InvalidArgument, "audience must not be empty")
		}
	}
	var want spiffeid.ID
	if req.SpiffeId != "" {
		id, err := spiffeid.FromString(req.SpiffeId)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "invalid requested SPIFFE ID: %v", err)
		}
		want = id
	}
	set, cred, err := h.caller(ctx)
	if err != nil {
		return nil, err
	}

	// Entries in serving order (the default first), one per hint (as for
	// X509-SVIDs), then the requested SPIFFE ID (as SPIRE: an entry left
	// out for its hint is not served by SPIFFE ID either); one token per
	// SPIFFE ID and hint, since two entries of one SPIFFE ID would get the
	// same token.
	type served struct {
		id   spiffeid.ID
		hint string
	}
	resp := &workloadpb.JWTSVIDResponse{}
	seen := make(map[served]bool)
	entries := uniqueHints(h.s.log, h.s.cfg.Cache.MatchingEntries(set), func(e *cache.Entry) *cache.Entry { return e })
	for _, e := range entries {
		k := served{e.SPIFFEID, e.Hint}
		if (!want.IsZero() && e.SPIFFEID != want) || seen[k] {
			continue
		}
		seen[k] = true
		token, err := h.jwtSVID(ctx, e, req.Audience)
		if err != nil {
			h.s.log.Warn("Cannot obtain JWT-SVID", "pid", cred.PID, "spiffe_id", e.SPIFFEID.String(), "error", err)
			var offline *cache.NoJWTSVIDError
			if errors.As(err, &offline) {
				// The server is unreachable and nothing is cached for
				// this audience: say exactly that.
				return nil, status.Error(codes.Unavailable, err.Error())
			}
			return nil, status.Errorf(codes.Unavailable, "could not fetch %q JWT-SVID: %v", e.SPIFFEID, err)
		}
		resp.Svids = append(resp.Svids, &workloadpb.JWTSVID{SpiffeId: e.SPIFFEID.String(), Svid: token, Hint: e.Hint})
	}
	if len(resp.Svids) == 0 {
		return nil, errNoIdentity
	}
	return resp, nil
}

// jwtSVID returns the cached JWT-SVID while fresh, else the minter's (the
// manager caches what it mints, and serves cached tokens while the server
// is unreachable). A minter error is returned as is.
func (h *handler) jwtSVID(ctx context.Context, e *cache.Entry, audience []string) (string, error) {
	if j, ok := h.s.cfg.Cache.GetJWTSVID(e.SPIFFEID, audience); ok {
		return j.Token, nil
	}
	if h.s.cfg.JWTMinter == nil {
		return "", fmt.Errorf("no JWT minter configured")
	}
	token, err := h.s.cfg.JWTMinter.MintJWTSVID(ctx, e, audience)
	if err != nil {
		return "", err
	}
	// Subject and audience only: a server clock a little ahead makes iat
	// "future", which relying parties accept within their leeway.
	if _, err := cache.JWTSVIDFromToken(token, e.SPIFFEID, audience); err != nil {
		return "", fmt.Errorf("minted token: %w", err)
	}
	return token, nil
}

// uniqueHints keeps, of the items (in serving order) whose entries share a
// non-empty hint, the first: the oldest entry, then the smallest entry ID,
// as SPIRE keeps. The SPIFFE Workload API requires a hint to be unique in
// a response.
func uniqueHints[T any](log *slog.Logger, items []T, entry func(T) *cache.Entry) []T {
	var (
		out   []T
		hints map[string]string // hint -> entry ID kept
	)
	for i, it := range items {
		e := entry(it)
		if e.Hint == "" {
			if out != nil {
				out = append(out, it)
			}
			continue
		}
		if hints == nil {
			hints = make(map[string]string)
		}
		if kept, dup := hints[e.Hint]; dup {
			if out == nil {
				out = slices.Clone(items[:i])
			}
			log.Warn("Ignoring an entry whose hint an older entry of the caller has", "entry_id", e.ID,
				"hint", e.Hint, "kept_entry_id", kept)
			continue
		}
		hints[e.Hint] = e.ID
		if out != nil {
			out = append(out, it)
		}
	}
	if out == nil {
		return items
	}
	return out
}

func (h *handler) ValidateJWTSVID(ctx context.Context, req *workloadpb.ValidateJWTSVIDRequest) (*workloadpb.ValidateJWTSVIDResponse, error) {
	if req.Audience == "" {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	if req.Svid == "" {
		return nil, status.Error(codes.InvalidArgument, "svid must be specified")
	}
	set, cred, err := h.caller(ctx)
	if err != nil {
		return nil, err
	}
	// The keys of our trust domain and of the trust domains the caller's
	// entries federate with; a caller without an identity may validate
	// JWT-SVIDs of our trust domain (as SPIRE, whose workload updates
	// always carry our bundle).
	u := h.s.cfg.Cache.FetchWorkloadUpdate(set)
	jb := jwtbundle.NewSet()
	if u.Bundle != nil {
		jb.Add(jwtbundle.FromJWTAuthorities(u.Bundle.TrustDomain(), u.Bundle.JWTAuthorities()))
	}
	for td, b := range u.FederatedBundles {
		jb.Add(jwtbundle.FromJWTAuthorities(td, b.JWTAuthorities()))
	}
	svid, err := jwtsvid.ParseAndValidate(req.Svid, jb, []string{req.Audience})
	if err != nil {
		// go-jose and jwtsvid quote the token's key ID and audiences and
		// the requested audience whole: cut what goes back and to the log.
		msg := clip.Cut(err.Error(), maxValidateErrLen)
		h.s.log.Debug("JWT-SVID validation failed", "pid", cred.PID, "error", msg)
		return nil, status.Error(codes.InvalidArgument, msg)
	}
	claims, err := claimsStruct(h.responseClaims(svid))
	if err != nil {
		return nil, status.Errorf(codes.Internal, "convert claims: %v", err)
	}
	return &workloadpb.ValidateJWTSVIDResponse{SpiffeId: svid.ID.String(), Claims: claims}, nil
}

// responseClaims are the claims ValidateJWTSVID returns, as SPIRE returns
// them: aud always a list; for a JWT-SVID of another trust domain only sub,
// aud, exp and the claims AllowedForeignJWTClaims names.
func (h *handler) responseClaims(svid *jwtsvid.SVID) map[string]any {
	out := make(map[string]any, len(svid.Claims))
	foreign := svid.ID.TrustDomain() != h.s.cfg.Cache.TrustDomain()
	for k, v := range svid.Claims {
		if foreign && k != "sub" && k != "aud" && k != "exp" && !slices.Contains(h.s.cfg.AllowedForeignJWTClaims, k) {
			continue
		}
		out[k] = v
	}
	if aud, ok := out["aud"].(string); ok {
		out["aud"] = []string{aud}
	}
	return out
}

// maxValidateErrLen bounds the text of a ValidateJWTSVID refusal.
const maxValidateErrLen = 256

// claimsStruct converts decoded JWT claims to a protobuf Struct through
// JSON, which copes with every value type the JWT decoder produces.
func claimsStruct(claims map[string]any) (*structpb.Struct, error) {
	raw, err := json.Marshal(claims)
	if err != nil {
		return nil, err
	}
	s := &structpb.Struct{}
	if err := protojson.Unmarshal(raw, s); err != nil {
		return nil, err
	}
	return s, nil
}
