package endpoints

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
)

// AgentValidatorConfig configures an AgentValidator.
type AgentValidatorConfig struct {
	Nodes NodeStore
	Log   *slog.Logger
	Clock clock.Clock
}

// AgentValidator applies the agent rule of the authorization middleware:
// the caller's X509-SVID is unexpired, its SPIFFE ID names an attested
// node that is not banned, and its serial number is the node's current
// (CertSerial) or renewed (NewCertSerial) one. Denials are PermissionDenied
// with SPIRE's PermissionDeniedDetails reason; a failed node lookup is
// Internal. The middleware uses it for every agent call; long-lived stream
// handlers (the entry service's watch mode) use ValidateAgent to re-check
// an agent whose stream outlives a ban or deletion.
type AgentValidator struct {
	nodes NodeStore
	log   *slog.Logger
	clk   clock.Clock
}

// NewAgentValidator returns a validator reading nodes from cfg.Nodes.
func NewAgentValidator(cfg AgentValidatorConfig) (*AgentValidator, error) {
	if cfg.Nodes == nil {
		return nil, errors.New("agent validator: node store is required")
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	return &AgentValidator{nodes: cfg.Nodes, log: log, clk: clock.OrReal(cfg.Clock)}, nil
}

// ValidateAgent checks, without changing the node, that the agent id
// presenting svid may still act as an agent. It returns nil or a gRPC
// status error.
func (v *AgentValidator) ValidateAgent(ctx context.Context, id spiffeid.ID, svid *x509.Certificate) error {
	_, err := v.check(ctx, id, svid)
	return err
}

// authorize is ValidateAgent, and the first use of a renewed SVID makes it
// the node's current one (as SPIRE).
func (v *AgentValidator) authorize(ctx context.Context, id spiffeid.ID, svid *x509.Certificate) error {
	node, err := v.check(ctx, id, svid)
	if err != nil || node.CertSerial == svid.SerialNumber.String() {
		return err
	}
	sid := id.String()
	_, err = v.nodes.UpdateNode(ctx, &datastore.AttestedNode{
		SPIFFEID:     sid,
		CertSerial:   node.NewCertSerial,
		CertNotAfter: node.NewCertNotAfter,
	}, &datastore.NodeMask{CertSerial: true, CertNotAfter: true, NewCertSerial: true, NewCertNotAfter: true})
	if err != nil {
		v.log.Warn("Unable to activate the new agent SVID", "agent_id", sid, "error", err)
		return status.Error(codes.Internal, "unable to activate the new agent SVID")
	}
	v.log.Debug("Activated renewed agent SVID", "agent_id", sid, "serial", node.NewCertSerial)
	return nil
}

// check returns the node when svid is acceptable for it: its serial is
// then the node's CertSerial or NewCertSerial.
func (v *AgentValidator) check(ctx context.Context, id spiffeid.ID, svid *x509.Certificate) (*datastore.AttestedNode, error) {
	sid := id.String()
	if svid == nil {
		return nil, agentDenied(types.PermissionDeniedDetails_AGENT_NOT_ATTESTED, "agent %q presented no X509-SVID", sid)
	}
	if v.clk.Now().After(svid.NotAfter) {
		return nil, agentDenied(types.PermissionDeniedDetails_AGENT_EXPIRED, "agent %q SVID is expired", sid)
	}
	node, err := v.nodes.GetNode(ctx, sid)
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return nil, agentDenied(types.PermissionDeniedDetails_AGENT_NOT_ATTESTED, "agent %q is not attested", sid)
	case err != nil:
		v.log.Error("Unable to look up agent information", "agent_id", sid, "error", err)
		return nil, status.Error(codes.Internal, "unable to look up agent information")
	}
	serial := svid.SerialNumber.String()
	switch {
	case node.CertSerial == "":
		return nil, agentDenied(types.PermissionDeniedDetails_AGENT_BANNED, "agent %q is banned", sid)
	case node.CertSerial == serial, node.NewCertSerial != "" && node.NewCertSerial == serial:
		return node, nil
	default:
		return nil, agentDenied(types.PermissionDeniedDetails_AGENT_NOT_ACTIVE, "agent %q expected to have serial number %q; has %q", sid, node.CertSerial, serial)
	}
}

func agentDenied(reason types.PermissionDeniedDetails_Reason, format string, args ...any) error {
	st := status.Newf(codes.PermissionDenied, format, args...)
	if d, err := st.WithDetails(&types.PermissionDeniedDetails{Reason: reason}); err == nil {
		st = d
	}
	return st.Err()
}
