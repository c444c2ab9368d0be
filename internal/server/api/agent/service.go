// Package agent implements spire-api-sdk's agent/v1 Agent service: node
// attestation, agent SVID renewal, join tokens and agent administration.
package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/attest/node/jointoken"
	"github.com/sigil-spiffe/sigil/internal/ca"
	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/server/api/apistatus"
	"github.com/sigil-spiffe/sigil/internal/server/api/convert"
	"github.com/sigil-spiffe/sigil/internal/server/api/rpccontext"
)

// DefaultJoinTokenTTL is used when CreateJoinToken is called with ttl 0.
const DefaultJoinTokenTTL = 600 * time.Second

// maxAgentVersionLen bounds PostStatus' agent_version (as SPIRE).
const maxAgentVersionLen = 255

// Signer is the subset of the CA manager the service uses.
type Signer interface {
	SignX509SVID(ctx context.Context, p ca.X509SVIDParams) ([]*x509.Certificate, error)
}

// Store is the subset of datastore.DataStore the service uses.
type Store interface {
	GetNode(ctx context.Context, spiffeID string) (*datastore.AttestedNode, error)
	CreateNode(ctx context.Context, n *datastore.AttestedNode) (*datastore.AttestedNode, error)
	UpdateNode(ctx context.Context, n *datastore.AttestedNode, mask *datastore.NodeMask) (*datastore.AttestedNode, error)
	DeleteNode(ctx context.Context, spiffeID string) (*datastore.AttestedNode, error)
	ListNodes(ctx context.Context, f datastore.NodeFilter, p datastore.Page) ([]*datastore.AttestedNode, string, error)
	CountNodes(ctx context.Context, f datastore.NodeFilter) (int, error)
	SetNodeSelectors(ctx context.Context, spiffeID string, sels []selector.Selector) error
	CreateJoinToken(ctx context.Context, t *datastore.JoinToken) error
	GetJoinToken(ctx context.Context, hash [32]byte) (*datastore.JoinToken, error)
	ConsumeJoinToken(ctx context.Context, hash [32]byte) (*datastore.JoinToken, error)
	AttestNode(ctx context.Context, a *datastore.NodeAttestation) (*datastore.AttestedNode, error)
	CreateEntries(ctx context.Context, entries []*datastore.Entry) ([]datastore.EntryResult, error)
}

// ChallengeFunc sends a challenge to the attesting agent and returns its
// response.
type ChallengeFunc func(ctx context.Context, challenge []byte) ([]byte, error)

// AttestResult is what a node attestor establishes.
type AttestResult struct {
	AgentID     spiffeid.ID
	Selectors   []selector.Selector
	CanReattest bool
}

// NodeAttestor is a server-side node attestor for a challenge/response (or
// single-shot) attestation type. Errors that carry a gRPC status keep their
// code; other errors are reported as PermissionDenied.
type NodeAttestor interface {
	Attest(ctx context.Context, payload []byte, challenge ChallengeFunc) (*AttestResult, error)
}

// EntryCache is told about node changes so authorization data is refreshed.
type EntryCache interface {
	Poke()
}

// Config configures the service.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	Store       Store
	CA          Signer
	// AgentTTL is the agent X509-SVID lifetime (agent_ttl); 0 = CA default.
	AgentTTL time.Duration
	// Attestors are extra node attestors by attestation type. join_token is
	// built in and cannot be overridden.
	Attestors map[string]NodeAttestor
	// DisableJoinToken refuses join_token attestation (the server config
	// has no NodeAttestor "join_token"). Tokens can still be created.
	DisableJoinToken bool
	// AgentIDAsSelector adds the selector spiffe_id:<agent ID> to every
	// attested node (SPIRE's experimental agent_spiffe_id_as_selector).
	AgentIDAsSelector bool
	Cache             EntryCache // optional
	Clock             clock.Clock
	Log               *slog.Logger
}

// Service implements agentv1.AgentServer.
type Service struct {
	agentv1.UnsafeAgentServer

	td        spiffeid.TrustDomain
	ds        Store
	ca        Signer
	agentTTL  time.Duration
	joinToken *jointoken.Attestor
	attestors map[string]NodeAttestor
	// noJoinToken refuses join_token attestation (Config.DisableJoinToken).
	noJoinToken bool
	idAsSel     bool
	cache       EntryCache
	clk         clock.Clock
	log         *slog.Logger
}

var _ agentv1.AgentServer = (*Service)(nil)

// New returns the service.
func New(cfg Config) (*Service, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("agent service: trust domain is required")
	}
	if cfg.Store == nil || cfg.CA == nil {
		return nil, errors.New("agent service: store and CA are required")
	}
	clk := clock.OrReal(cfg.Clock)
	jt, err := jointoken.New(jointoken.Config{TrustDomain: cfg.TrustDomain, Tokens: cfg.Store, Clock: clk})
	if err != nil {
		return nil, fmt.Errorf("agent service: %w", err)
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	return &Service{
		td:          cfg.TrustDomain,
		ds:          cfg.Store,
		ca:          cfg.CA,
		agentTTL:    cfg.AgentTTL,
		joinToken:   jt,
		attestors:   cfg.Attestors,
		noJoinToken: cfg.DisableJoinToken,
		idAsSel:     cfg.AgentIDAsSelector,
		cache:       cfg.Cache,
		clk:         clk,
		log:         log.With("service", "agent.v1"),
	}, nil
}

// Register registers the service on s.
func (s *Service) Register(r grpc.ServiceRegistrar) { agentv1.RegisterAgentServer(r, s) }

func (s *Service) poke() {
	if s.cache != nil {
		s.cache.Poke()
	}
}

// CountAgents counts agents matching the filter.
func (s *Service) CountAgents(ctx context.Context, req *agentv1.CountAgentsRequest) (*agentv1.CountAgentsResponse, error) {
	f, err := nodeFilter(req.GetFilter())
	if err != nil {
		return nil, s.err(ctx, codes.InvalidArgument, "failed to parse filter", err)
	}
	n, err := s.ds.CountNodes(ctx, f)
	if err != nil {
		return nil, s.err(ctx, codes.Internal, "failed to count agents", err)
	}
	return &agentv1.CountAgentsResponse{Count: int32(min(n, 1<<31-1))}, nil
}

// ListAgents lists agents, optionally filtered and paginated.
func (s *Service) ListAgents(ctx context.Context, req *agentv1.ListAgentsRequest) (*agentv1.ListAgentsResponse, error) {
	f, err := nodeFilter(req.GetFilter())
	if err != nil {
		return nil, s.err(ctx, codes.InvalidArgument, "failed to parse filter", err)
	}
	if req.GetPageSize() < 0 {
		return nil, s.err(ctx, codes.InvalidArgument, "page size cannot be negative", nil)
	}
	var p datastore.Page
	if req.GetPageSize() > 0 {
		p = datastore.Page{Size: int(req.GetPageSize()), Token: req.GetPageToken()}
	}
	nodes, next, err := s.ds.ListNodes(ctx, f, p)
	if err != nil {
		if errors.Is(err, datastore.ErrInvalidPage) {
			// The token is the client's text, of any size: neither sent
			// back nor logged.
			return nil, s.err(ctx, codes.InvalidArgument, "could not parse page token", nil)
		}
		return nil, s.err(ctx, codes.Internal, "failed to list agents", err)
	}
	resp := &agentv1.ListAgentsResponse{NextPageToken: next}
	for _, n := range nodes {
		a, err := convert.AgentToProto(n)
		if err != nil {
			s.log.WarnContext(ctx, "Skipping agent with malformed SPIFFE ID", "spiffe_id", n.SPIFFEID, "error", err)
			continue
		}
		convert.ApplyAgentMask(a, req.GetOutputMask())
		resp.Agents = append(resp.Agents, a)
	}
	return resp, nil
}

// GetAgent returns one agent.
func (s *Service) GetAgent(ctx context.Context, req *agentv1.GetAgentRequest) (*types.Agent, error) {
	id, err := s.agentIDFromProto(req.GetId())
	if err != nil {
		return nil, s.err(ctx, codes.InvalidArgument, "invalid agent ID", err)
	}
	n, err := s.ds.GetNode(ctx, id.String())
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return nil, s.err(ctx, codes.NotFound, "agent not found", nil)
	case err != nil:
		return nil, s.err(ctx, codes.Internal, "failed to fetch agent", err)
	}
	a, err := convert.AgentToProto(n)
	if err != nil {
		return nil, s.err(ctx, codes.Internal, "failed to convert attested node to agent", err)
	}
	convert.ApplyAgentMask(a, req.GetOutputMask())
	return a, nil
}

// DeleteAgent deletes an agent; it must attest again to get an SVID.
func (s *Service) DeleteAgent(ctx context.Context, req *agentv1.DeleteAgentRequest) (*emptyResp, error) {
	return s.changeAgent(ctx, req.GetId(), "failed to remove agent", "Agent deleted", func(id string) error {
		_, err := s.ds.DeleteNode(ctx, id)
		return err
	})
}

// BanAgent bans an agent: its serial numbers are cleared so it can neither
// use its SVID nor renew; it must be deleted before it may attest again.
func (s *Service) BanAgent(ctx context.Context, req *agentv1.BanAgentRequest) (*emptyResp, error) {
	return s.changeAgent(ctx, req.GetId(), "failed to ban agent", "Agent banned", func(id string) error {
		_, err := s.ds.UpdateNode(ctx, &datastore.AttestedNode{SPIFFEID: id},
			&datastore.NodeMask{CertSerial: true, NewCertSerial: true})
		return err
	})
}

// changeAgent applies change to the stored node of the agent pb names,
// then pokes the entry cache and logs done. A missing node is NotFound;
// another failure is Internal, described by failed.
func (s *Service) changeAgent(ctx context.Context, pb *types.SPIFFEID, failed, done string, change func(id string) error) (*emptyResp, error) {
	id, err := s.agentIDFromProto(pb)
	if err != nil {
		return nil, s.err(ctx, codes.InvalidArgument, "invalid agent ID", err)
	}
	err = change(id.String())
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return nil, s.err(ctx, codes.NotFound, "agent not found", nil)
	case err != nil:
		return nil, s.err(ctx, codes.Internal, failed, err)
	}
	s.poke()
	s.log.InfoContext(ctx, done, "spiffe_id", id.String())
	return &emptyResp{}, nil
}

// AttestAgent attests a node and issues its agent X509-SVID.
//
// The work is staged so that a flood of bad credentials costs little and
// can never crowd out a valid one (see rpccontext.Stages):
//
//  1. the credential is checked, cheaply and without consuming it (for a
//     join token: its format, its hash, one indexed read), in one of the
//     source's check slots;
//  2. only then, in a slot of expensive work: the CSR is parsed and its
//     key checked against the CA's key policy, its signature verified, the
//     SVID signed;
//  3. one transaction consumes the join token and records the node. A
//     request that fails anywhere before its commit consumes nothing.
func (s *Service) AttestAgent(stream agentv1.Agent_AttestAgentServer) error {
	ctx := stream.Context()
	stages := rpccontext.StagesFrom(ctx)
	req, err := stream.Recv()
	if err != nil {
		return s.err(ctx, codes.InvalidArgument, "failed to receive request from stream", err)
	}
	params := req.GetParams()
	if err := validateAttestParams(params); err != nil {
		return s.err(ctx, codes.InvalidArgument, "malformed param", err)
	}
	attType := params.GetData().GetType()

	release, err := stages.Check(ctx)
	if err != nil {
		return err
	}
	att, err := s.checkCredential(ctx, stream, stages, attType, params.GetData().GetPayload(), &release)
	release()
	if err != nil {
		return err
	}
	agentID := att.res.AgentID
	log := s.log.With("agent_id", agentID.String(), "node_attestor_type", attType)

	releaseWork, err := stages.Work(ctx)
	if err != nil {
		return err
	}
	defer releaseWork()
	csr, err := ca.VerifyCSR(params.GetParams().GetCsr())
	if err != nil {
		return s.err(ctx, codes.InvalidArgument, "failed to parse CSR", err)
	}
	chain, err := s.sign(ctx, agentID, csr)
	if err != nil {
		return err
	}
	leaf := chain[0]
	sels := att.res.Selectors
	if s.idAsSel {
		sels = append(sels, selector.Selector{Type: "spiffe_id", Value: agentID.String()})
	}
	rec := &datastore.NodeAttestation{Node: &datastore.AttestedNode{
		SPIFFEID:        agentID.String(),
		AttestationType: attType,
		CertSerial:      leaf.SerialNumber.String(),
		CertNotAfter:    leaf.NotAfter.Unix(),
		CanReattest:     att.res.CanReattest,
		Selectors:       selector.Dedupe(sels),
	}}
	if att.token != nil {
		rec.JoinToken, rec.ValidAt = &att.token.Hash, att.token.ValidAt
	}
	_, err = s.ds.AttestNode(ctx, rec)
	switch {
	case errors.Is(err, datastore.ErrNotFound) && att.token != nil:
		// Used by a concurrent attestation (or expired) since the check.
		return s.err(ctx, codes.InvalidArgument, "failed to attest: join token does not exist or has already been used", nil)
	case errors.Is(err, datastore.ErrBanned):
		return s.err(ctx, codes.PermissionDenied, "failed to attest: agent is banned", nil)
	case err != nil:
		return s.err(ctx, codes.Internal, "failed to record attested agent", err)
	}
	releaseWork()
	s.poke()

	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		log = log.With("address", p.Addr.String())
	}
	log.InfoContext(ctx, "Agent attestation request completed")

	if err := stream.Send(&agentv1.AttestAgentResponse{Step: &agentv1.AttestAgentResponse_Result_{
		Result: &agentv1.AttestAgentResponse_Result{Svid: x509SVIDToProto(agentID, chain), Reattestable: att.res.CanReattest},
	}}); err != nil {
		return s.err(ctx, codes.Internal, "failed to send response over stream", err)
	}
	return nil
}

// attestation is a credential that checked out.
type attestation struct {
	res   *AttestResult
	token *jointoken.Credential // set for join_token: consumed with the node record
}

// checkCredential runs the node attestor of attType on payload and checks
// the agent it names may attest (in our trust domain, not banned). It
// holds *release, a check slot, except while it waits for the client
// (challenge/response attestors), when it gives the slot back and then
// waits for a new one.
func (s *Service) checkCredential(ctx context.Context, stream agentv1.Agent_AttestAgentServer, stages rpccontext.Stages,
	attType string, payload []byte, release *func()) (*attestation, error) {
	att := &attestation{}
	if attType == jointoken.Type && !s.noJoinToken {
		cred, err := s.joinToken.Check(ctx, payload)
		switch {
		case errors.Is(err, jointoken.ErrUnknownToken):
			return nil, s.err(ctx, codes.InvalidArgument, "failed to attest: join token does not exist or has already been used", nil)
		case errors.Is(err, jointoken.ErrExpiredToken):
			return nil, s.err(ctx, codes.InvalidArgument, "join token expired", nil)
		case err != nil:
			return nil, s.err(ctx, codes.Internal, "failed to attest with join token", err)
		}
		att.res, att.token = &AttestResult{AgentID: cred.AgentID}, cred
	} else {
		at, ok := s.attestors[attType]
		if !ok {
			return nil, s.err(ctx, codes.FailedPrecondition, "error getting node attestor", fmt.Errorf("could not find node attestor type %s", clip.Quote(attType)))
		}
		res, err := at.Attest(ctx, payload, func(ctx context.Context, challenge []byte) ([]byte, error) {
			(*release)()
			*release = func() {}
			if err := stream.Send(&agentv1.AttestAgentResponse{Step: &agentv1.AttestAgentResponse_Challenge{Challenge: challenge}}); err != nil {
				return nil, status.Error(codes.Internal, "failed to send challenge to agent")
			}
			r, err := stream.Recv()
			if err != nil {
				return nil, status.Error(codes.Internal, "failed to receive challenge response from agent")
			}
			rel, err := stages.Check(ctx)
			if err != nil {
				return nil, err
			}
			*release = rel
			return r.GetChallengeResponse(), nil
		})
		if err != nil {
			if st, ok := status.FromError(err); ok {
				return nil, s.err(ctx, st.Code(), st.Message(), nil)
			}
			return nil, s.err(ctx, codes.PermissionDenied, "failed to attest", err)
		}
		if res == nil {
			return nil, s.err(ctx, codes.Internal, "node attestor returned no result", nil)
		}
		att.res = res
	}

	agentID := att.res.AgentID
	switch {
	case !agentID.MemberOf(s.td):
		return nil, s.err(ctx, codes.Internal, "node attestor produced an agent ID outside the trust domain", fmt.Errorf("%q", agentID))
	case agentID.Path() == "/spire/server":
		return nil, s.err(ctx, codes.Internal, "agent ID cannot collide with the server ID", nil)
	}
	existing, err := s.ds.GetNode(ctx, agentID.String())
	switch {
	case errors.Is(err, datastore.ErrNotFound):
	case err != nil:
		return nil, s.err(ctx, codes.Internal, "failed to fetch agent", err)
	case existing.Banned():
		return nil, s.err(ctx, codes.PermissionDenied, "failed to attest: agent is banned", nil)
	}
	return att, nil
}

// RenewAgent issues a new agent SVID to the calling agent. The new serial is
// recorded as the node's NewCertSerial; the authorization middleware makes
// it current when the agent first uses it.
func (s *Service) RenewAgent(ctx context.Context, req *agentv1.RenewAgentRequest) (*agentv1.RenewAgentResponse, error) {
	caller, ok := rpccontext.CallerFrom(ctx)
	if !ok || caller.ID.IsZero() {
		return nil, s.err(ctx, codes.Internal, "caller ID missing from request context", nil)
	}
	node, err := s.ds.GetNode(ctx, caller.ID.String())
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return nil, s.err(ctx, codes.NotFound, "agent not found", nil)
	case err != nil:
		return nil, s.err(ctx, codes.Internal, "failed to fetch agent", err)
	}
	if node.CanReattest {
		return nil, apistatus.PermissionDenied(types.PermissionDeniedDetails_AGENT_MUST_REATTEST, "agent must reattest instead of renew")
	}
	if req.GetParams() == nil {
		return nil, s.err(ctx, codes.InvalidArgument, "params cannot be nil", nil)
	}
	if len(req.GetParams().GetCsr()) == 0 {
		return nil, s.err(ctx, codes.InvalidArgument, "missing CSR", nil)
	}
	csr, err := ca.VerifyCSR(req.GetParams().GetCsr())
	if err != nil {
		return nil, s.err(ctx, codes.InvalidArgument, "failed to parse CSR", err)
	}
	chain, err := s.sign(ctx, caller.ID, csr)
	if err != nil {
		return nil, err
	}
	_, err = s.ds.UpdateNode(ctx, &datastore.AttestedNode{
		SPIFFEID:        caller.ID.String(),
		NewCertSerial:   chain[0].SerialNumber.String(),
		NewCertNotAfter: chain[0].NotAfter.Unix(),
	}, &datastore.NodeMask{NewCertSerial: true, NewCertNotAfter: true})
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return nil, s.err(ctx, codes.NotFound, "agent not found", nil)
	case err != nil:
		return nil, s.err(ctx, codes.Internal, "failed to update agent", err)
	}
	s.poke()
	s.log.InfoContext(ctx, "Renewed agent SVID", "agent_id", caller.ID.String())
	return &agentv1.RenewAgentResponse{Svid: x509SVIDToProto(caller.ID, chain)}, nil
}

// PostStatus records the version the agent reports (agent_version in
// ListAgents and GetAgent), as SPIRE does: an empty version changes
// nothing; one longer than 255 bytes or not printable UTF-8 is refused.
func (s *Service) PostStatus(ctx context.Context, req *agentv1.PostStatusRequest) (*agentv1.PostStatusResponse, error) {
	caller, ok := rpccontext.CallerFrom(ctx)
	if !ok || caller.ID.IsZero() {
		return nil, s.err(ctx, codes.Internal, "caller ID missing from request context", nil)
	}
	v := req.GetAgentVersion()
	if len(v) > maxAgentVersionLen {
		return nil, s.err(ctx, codes.InvalidArgument, "agent version is too long (max 255 characters)", nil)
	}
	if !utf8.ValidString(v) || strings.IndexFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
		return nil, s.err(ctx, codes.InvalidArgument, "agent version must be printable UTF-8", nil)
	}
	if v == "" {
		return &agentv1.PostStatusResponse{}, nil
	}
	_, err := s.ds.UpdateNode(ctx, &datastore.AttestedNode{SPIFFEID: caller.ID.String(), AgentVersion: v}, &datastore.NodeMask{AgentVersion: true})
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return nil, s.err(ctx, codes.NotFound, "agent not found", nil)
	case err != nil:
		return nil, s.err(ctx, codes.Internal, "failed to update agent", err)
	}
	s.log.DebugContext(ctx, "Agent status updated", "agent_id", caller.ID.String(), "agent_version", v)
	return &agentv1.PostStatusResponse{}, nil
}

// CreateJoinToken creates a single-use join token. Only its SHA-256 is
// stored. With agent_id, an alias entry maps the join-token agent ID to it.
func (s *Service) CreateJoinToken(ctx context.Context, req *agentv1.CreateJoinTokenRequest) (*types.JoinToken, error) {
	ttl := time.Duration(req.GetTtl()) * time.Second
	switch {
	case req.GetTtl() < 0:
		return nil, s.err(ctx, codes.InvalidArgument, "ttl is required, you must provide one", nil)
	case req.GetTtl() == 0:
		ttl = DefaultJoinTokenTTL
	}

	var aliasID spiffeid.ID
	if req.GetAgentId() != nil {
		id, err := convert.WorkloadIDFromProto(s.td, req.GetAgentId())
		if err != nil {
			return nil, s.err(ctx, codes.InvalidArgument, "invalid agent ID", err)
		}
		aliasID = id
	}

	token := req.GetToken()
	if token == "" {
		var err error
		if token, err = jointoken.Generate(); err != nil {
			return nil, s.err(ctx, codes.Internal, "failed to generate token", err)
		}
	} else if err := jointoken.ValidateToken(token); err != nil {
		return nil, s.err(ctx, codes.InvalidArgument, "invalid token", err)
	}
	joinID, err := jointoken.AgentID(s.td, token)
	if err != nil {
		return nil, s.err(ctx, codes.InvalidArgument, "invalid token", err)
	}

	now := s.clk.Now()
	expiry := now.Add(ttl)
	hash := jointoken.Hash(token)
	err = s.ds.CreateJoinToken(ctx, &datastore.JoinToken{Hash: hash, ExpiresAt: expiry.Unix(), CreatedAt: now.Unix()})
	switch {
	case errors.Is(err, datastore.ErrAlreadyExists):
		return nil, s.err(ctx, codes.AlreadyExists, "failed to create token: token already exists", nil)
	case err != nil:
		return nil, s.err(ctx, codes.Internal, "failed to create token", err)
	}

	if !aliasID.IsZero() {
		if err := s.createAliasEntry(ctx, joinID, aliasID); err != nil {
			// Do not leave a token behind whose promised alias is missing.
			if _, derr := s.ds.ConsumeJoinToken(ctx, hash); derr != nil {
				s.log.WarnContext(ctx, "Failed to remove join token after alias entry failure", "error", derr)
			}
			return nil, s.err(ctx, codes.Internal, "failed to create join token registration entry", err)
		}
		s.poke()
	}
	s.log.InfoContext(ctx, "Join token created", "expires_at", expiry.Unix(), "with_alias", !aliasID.IsZero())
	return &types.JoinToken{Value: token, ExpiresAt: expiry.Unix()}, nil
}

// createAliasEntry creates SPIRE's join-token alias entry: parent is the
// join-token agent ID, spiffe_id the requested agent ID, and the single
// selector spiffe_id:<join-token agent ID>.
func (s *Service) createAliasEntry(ctx context.Context, joinID, aliasID spiffeid.ID) error {
	res, err := s.ds.CreateEntries(ctx, []*datastore.Entry{{
		SPIFFEID:  aliasID.String(),
		ParentID:  joinID.String(),
		Selectors: []selector.Selector{{Type: "spiffe_id", Value: joinID.String()}},
	}})
	if err != nil {
		return err
	}
	if len(res) != 1 {
		return fmt.Errorf("store returned %d results for 1 entry", len(res))
	}
	return res[0].Err
}

func (s *Service) sign(ctx context.Context, id spiffeid.ID, csr *x509.CertificateRequest) ([]*x509.Certificate, error) {
	chain, err := s.ca.SignX509SVID(ctx, ca.X509SVIDParams{SPIFFEID: id, PublicKey: csr.PublicKey, TTL: s.agentTTL})
	if err != nil {
		return nil, s.err(ctx, codes.Internal, "failed to sign X509 SVID", err)
	}
	if len(chain) == 0 {
		return nil, s.err(ctx, codes.Internal, "failed to sign X509 SVID", errors.New("CA returned an empty chain"))
	}
	return chain, nil
}

// err logs and returns a status error (apistatus.Fail).
func (s *Service) err(ctx context.Context, code codes.Code, msg string, cause error) error {
	return apistatus.Fail(ctx, s.log, code, msg, cause)
}
