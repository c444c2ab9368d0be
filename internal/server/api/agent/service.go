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

	"github.com/sigil-spiffe/sigil/internal/attest/node"
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
	RenewNode(ctx context.Context, spiffeID, serial string, notAfter int64) (*datastore.AttestedNode, error)
	DeleteNode(ctx context.Context, spiffeID string) (*datastore.AttestedNode, error)
	ListNodes(ctx context.Context, f datastore.NodeFilter, p datastore.Page) ([]*datastore.AttestedNode, string, error)
	CountNodes(ctx context.Context, f datastore.NodeFilter) (int, error)
	CreateJoinToken(ctx context.Context, t *datastore.JoinToken) error
	ConsumeJoinToken(ctx context.Context, hash [32]byte) (*datastore.JoinToken, error)
	AttestNode(ctx context.Context, a *datastore.NodeAttestation) (*datastore.AttestedNode, error)
	CreateEntries(ctx context.Context, entries []*datastore.Entry) ([]datastore.EntryResult, error)
}

// NodeAttestor is the server half of a node attestor (see package
// internal/attest/node): it checks the attestation data, asking the agent
// challenges through challenge when its method has them. Errors wrapping
// node.ErrInvalid are answered InvalidArgument, node.ErrRefused
// PermissionDenied, both with the error's text; any other error is an
// internal failure, logged and answered without its details.
type NodeAttestor interface {
	Attest(ctx context.Context, payload []byte, challenge node.ChallengeFunc) (*node.Result, error)
}

// SingleUseAttestor is a NodeAttestor whose credential may be used once
// (join_token): its Attest checks the credential without consuming it, and
// the transaction that records the node consumes it, so a request that
// fails after the check (a refused CSR, a storage failure) leaves it
// usable.
type SingleUseAttestor interface {
	NodeAttestor
	// JoinTokenHash identifies the join token in payload to the store
	// (datastore.NodeAttestation.JoinToken).
	JoinTokenHash(payload []byte) [32]byte
}

// Config configures the service.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	Store       Store
	CA          Signer
	// AgentTTL is the agent X509-SVID lifetime (agent_ttl); 0 = CA default.
	AgentTTL time.Duration
	// Attestors are the configured node attestors by attestation type
	// (their plugin name, which agents send). An agent of another type is
	// refused (FailedPrecondition, as SPIRE). Join tokens can be created
	// without NodeAttestor "join_token"; they attest only with it.
	Attestors map[string]NodeAttestor
	// AgentIDAsSelector adds the selector spiffe_id:<agent ID> to every
	// attested node (SPIRE's experimental agent_spiffe_id_as_selector).
	AgentIDAsSelector bool
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
	attestors map[string]NodeAttestor
	idAsSel   bool
	clk       clock.Clock
	log       *slog.Logger
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
	for name, a := range cfg.Attestors {
		if a == nil {
			return nil, fmt.Errorf("agent service: node attestor %q is nil", name)
		}
	}
	clk := clock.OrReal(cfg.Clock)
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	return &Service{
		td:        cfg.TrustDomain,
		ds:        cfg.Store,
		ca:        cfg.CA,
		agentTTL:  cfg.AgentTTL,
		attestors: cfg.Attestors,
		idAsSel:   cfg.AgentIDAsSelector,
		clk:       clk,
		log:       log.With("service", "agent.v1"),
	}, nil
}

// Register registers the service on s.
func (s *Service) Register(r grpc.ServiceRegistrar) { agentv1.RegisterAgentServer(r, s) }

// CountAgents counts agents matching the filter.
func (s *Service) CountAgents(ctx context.Context, req *agentv1.CountAgentsRequest) (*agentv1.CountAgentsResponse, error) {
	f, err := nodeFilter(req.GetFilter())
	if err != nil {
		return nil, s.err(ctx, codes.InvalidArgument, "failed to parse filter", err)
	}
	// A listing: a read replica may serve it (PostgreSQL ro_connection_string).
	n, err := s.ds.CountNodes(datastore.TolerateStale(ctx), f)
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
	nodes, next, err := s.ds.ListNodes(datastore.TolerateStale(ctx), f, p)
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
// then logs done (the store tells the entry cache). A missing node is NotFound;
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
	s.log.InfoContext(ctx, done, "spiffe_id", id.String())
	return &emptyResp{}, nil
}

// AttestAgent attests a node and issues its agent X509-SVID.
//
// The agent sends its attestation data (type and payload) with a CSR; the
// node attestor configured for that type checks it, asking the agent
// challenges when its method has them (AttestAgentResponse.challenge, each
// answered by an AttestAgentRequest.challenge_response, as in SPIRE's
// agent/v1 protocol). A node that was attested before attests again only
// when its attestor says it can (node.Result.CanReattest) and it is not
// banned: its selectors are replaced and the new SVID's serial becomes
// current.
//
// The work is staged so that a flood of bad credentials costs little and
// can never crowd out a valid one (see rpccontext.Stages):
//
//  1. the credential is checked, cheaply and without consuming it (for a
//     join token: its format, its hash, one indexed read), in one of the
//     source's check slots, released while waiting for a challenge's
//     answer (a wait the source may have only so many of at once: see
//     rpccontext.Stages.Await);
//  2. only then, in a slot of expensive work: the CSR is parsed and its
//     key checked against the CA's key policy, its signature verified, the
//     SVID signed;
//  3. one transaction consumes a single-use credential (join token) and
//     records the node. A request that fails anywhere before its commit
//     consumes nothing.
//
// The endpoints bound the whole exchange in time (ratelimit.Exchange): a
// client that stalls is cut, whichever message it owes.
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
	}, MustBeNew: !att.res.CanReattest}
	if att.token != nil {
		// Still unexpired now, when it is consumed.
		rec.JoinToken, rec.ValidAt = att.token, s.clk.Now().Unix()
	}
	_, err = s.ds.AttestNode(ctx, rec)
	switch {
	case errors.Is(err, datastore.ErrNotFound) && att.token != nil:
		// Used by a concurrent attestation (or expired) since the check.
		return s.err(ctx, codes.InvalidArgument, "failed to attest: join token does not exist or has already been used", nil)
	case errors.Is(err, datastore.ErrBanned):
		return s.err(ctx, codes.PermissionDenied, "failed to attest: agent is banned", nil)
	case errors.Is(err, datastore.ErrAlreadyExists):
		// Attested by a concurrent request since the check.
		return s.err(ctx, codes.PermissionDenied, errAttestedBefore, nil)
	case err != nil:
		return s.err(ctx, codes.Internal, "failed to record attested agent", err)
	}
	releaseWork()

	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		log = log.With("address", p.Addr.String())
	}
	if att.reattest {
		log.InfoContext(ctx, "Agent re-attested")
	}
	log.InfoContext(ctx, "Agent attestation request completed")

	if err := stream.Send(&agentv1.AttestAgentResponse{Step: &agentv1.AttestAgentResponse_Result_{
		Result: &agentv1.AttestAgentResponse_Result{Svid: x509SVIDToProto(agentID, chain), Reattestable: att.res.CanReattest},
	}}); err != nil {
		return s.err(ctx, codes.Internal, "failed to send response over stream", err)
	}
	return nil
}

// errAttestedBefore refuses a node that was attested before to an attestor
// that cannot re-attest (SPIRE's text for its trust-on-first-use ones).
const errAttestedBefore = "failed to attest: attestation data has already been used to attest an agent"

// attestation is a credential that checked out.
type attestation struct {
	res *node.Result
	// token is the hash of a single-use credential (join token), consumed
	// with the node record; nil for other attestors.
	token *[32]byte
	// reattest: the node was attested before.
	reattest bool
}

// checkCredential runs the node attestor of attType on payload and checks
// the agent it names may attest: in our trust domain, not banned, and new
// unless its attestor lets it re-attest. It holds *release, a check slot,
// except while it waits for the client (challenge/response attestors), when
// it gives the slot back and then waits for a new one.
func (s *Service) checkCredential(ctx context.Context, stream agentv1.Agent_AttestAgentServer, stages rpccontext.Stages,
	attType string, payload []byte, release *func()) (*attestation, error) {
	at, ok := s.attestors[attType]
	if !ok {
		return nil, s.err(ctx, codes.FailedPrecondition, "error getting node attestor", fmt.Errorf("could not find node attestor type %s", clip.Quote(attType)))
	}
	challenge := func(ctx context.Context, ch []byte) ([]byte, error) {
		(*release)()
		*release = func() {}
		// Waiting on the client, counted against its source's cap on
		// exchanges that do (a client that never answers is cut by the
		// endpoints' deadline on the whole exchange).
		answered, err := stages.Await(ctx)
		if err != nil {
			return nil, &exchangeError{status: err}
		}
		defer answered()
		if err := stream.Send(&agentv1.AttestAgentResponse{Step: &agentv1.AttestAgentResponse_Challenge{Challenge: ch}}); err != nil {
			return nil, &exchangeError{code: codes.Internal, msg: "failed to send challenge to agent", cause: err}
		}
		r, err := stream.Recv()
		if err != nil {
			return nil, &exchangeError{code: codes.Internal, msg: "failed to receive challenge response from agent", cause: err}
		}
		answered()
		resp, ok := r.GetStep().(*agentv1.AttestAgentRequest_ChallengeResponse)
		if !ok {
			return nil, &exchangeError{code: codes.InvalidArgument, msg: "expected a challenge response from agent"}
		}
		rel, err := stages.Check(ctx)
		if err != nil {
			return nil, &exchangeError{status: err}
		}
		*release = rel
		return resp.ChallengeResponse, nil
	}
	res, err := at.Attest(ctx, payload, challenge)
	if err != nil {
		return nil, s.attestErr(ctx, err)
	}
	if res == nil {
		return nil, s.err(ctx, codes.Internal, "node attestor returned no result", nil)
	}
	att := &attestation{res: res}
	if su, ok := at.(SingleUseAttestor); ok {
		h := su.JoinTokenHash(payload)
		att.token = &h
	}

	agentID := res.AgentID
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
	case !res.CanReattest:
		// A trust-on-first-use credential (join token) names a new agent;
		// as SPIRE's TOFU attestors, refuse one that was attested already.
		return nil, s.err(ctx, codes.PermissionDenied, errAttestedBefore, nil)
	default:
		att.reattest = true
	}
	return att, nil
}

// exchangeError is a failure of the challenge/response exchange with the
// agent (it went away, or sent something other than a response): answered
// as it is, whatever the attestor wraps it in.
type exchangeError struct {
	code   codes.Code
	msg    string
	cause  error
	status error // a status error to return unchanged (a rate limit)
}

func (e *exchangeError) Error() string {
	if e.status != nil {
		return e.status.Error()
	}
	if e.cause != nil {
		return e.msg + ": " + e.cause.Error()
	}
	return e.msg
}

// attestErr answers a node attestor's error (see NodeAttestor).
func (s *Service) attestErr(ctx context.Context, err error) error {
	var xe *exchangeError
	switch {
	case errors.As(err, &xe) && xe.status != nil:
		return xe.status
	case errors.As(err, &xe):
		if ctx.Err() != nil {
			return s.err(ctx, codes.Canceled, "attestation canceled: the agent went away", nil)
		}
		return s.err(ctx, xe.code, xe.msg, xe.cause)
	case errors.Is(err, node.ErrInvalid):
		return s.err(ctx, codes.InvalidArgument, "failed to attest", err)
	case errors.Is(err, node.ErrRefused):
		return s.err(ctx, codes.PermissionDenied, "failed to attest", err)
	case ctx.Err() != nil:
		return s.err(ctx, codes.Canceled, "attestation canceled: the agent went away", nil)
	}
	return s.err(ctx, codes.Internal, "failed to attest", err)
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
	// Refused if a ban committed since the check above (here or on
	// another server): the new SVID is then never usable.
	_, err = s.ds.RenewNode(ctx, caller.ID.String(), chain[0].SerialNumber.String(), chain[0].NotAfter.Unix())
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return nil, s.err(ctx, codes.NotFound, "agent not found", nil)
	case errors.Is(err, datastore.ErrBanned):
		return nil, apistatus.PermissionDenied(types.PermissionDeniedDetails_AGENT_BANNED, "agent is banned")
	case err != nil:
		return nil, s.err(ctx, codes.Internal, "failed to update agent", err)
	}
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
