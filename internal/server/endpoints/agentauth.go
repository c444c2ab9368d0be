package endpoints

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/server/api/apistatus"
)

// NodeCache answers node lookups from memory (internal/server/entrycache's
// Cache). GetNode must see this server's node writes once they returned
// (read-your-writes: the store notifies the cache), and returns
// datastore.ErrNotFound for a node that does not exist; any other error
// makes the validator read the store instead. Poke asks it to catch up
// with the store now (the validator found it behind another server's
// write).
type NodeCache interface {
	GetNode(ctx context.Context, spiffeID string) (*datastore.AttestedNode, error)
	Poke()
}

// AgentValidatorConfig configures an AgentValidator.
type AgentValidatorConfig struct {
	// Nodes is the datastore: the authority, read when Cache is nil or
	// fails, and written when a renewed SVID is first used.
	Nodes NodeStore
	// Cache is optional: when set, the agent check reads nodes from it
	// instead of the datastore (no SQLite read per RPC). Its consistency
	// is the validator's: a ban or deletion made on this server is
	// effective for the next RPC, one made by another server sharing the
	// database once the cache learns of it (PostgreSQL notifications: at
	// once; else within the cache's poll interval).
	Cache NodeCache
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
//
// With a Cache, the check reads the node from memory. The datastore is read
// only to confirm a denial (see current) and on the first use of a renewed
// SVID (the NewCertSerial to CertSerial promotion), which reads and writes
// it; the store's notification brings the cache up to date.
type AgentValidator struct {
	nodes NodeStore
	cache NodeCache
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
	return &AgentValidator{nodes: cfg.Nodes, cache: cfg.Cache, log: log, clk: clock.OrReal(cfg.Clock)}, nil
}

// ValidateAgent checks, without changing the node, that the agent id
// presenting svid may still act as an agent. It returns nil or a gRPC
// status error.
func (v *AgentValidator) ValidateAgent(ctx context.Context, id spiffeid.ID, svid *x509.Certificate) error {
	_, err := v.current(ctx, id, svid)
	return err
}

// current returns the node when svid is acceptable for it. With a cache,
// the cached record can only accept: a denial that depends on the record
// (banned, other serial) is confirmed on the datastore, since the cache may
// be behind another server's write (a re-attestation or renewal made there
// an instant ago), and the cache is then poked to catch up. Denials are
// rare, so the datastore is still read about never on the hot path.
func (v *AgentValidator) current(ctx context.Context, id spiffeid.ID, svid *x509.Certificate) (*datastore.AttestedNode, error) {
	if v.cache == nil {
		return v.check(ctx, id, svid, v.nodes.GetNode)
	}
	node, err := v.check(ctx, id, svid, v.getNode)
	if !recordDenial(err) {
		return node, err
	}
	node, err = v.check(ctx, id, svid, v.nodes.GetNode)
	if err == nil {
		v.cache.Poke()
	}
	return node, err
}

// recordDenial reports whether err is a denial decided by the node record
// (banned, or the SVID's serial is not the node's).
func recordDenial(err error) bool {
	if status.Code(err) != codes.PermissionDenied {
		return false
	}
	for _, d := range status.Convert(err).Details() {
		if pd, ok := d.(*types.PermissionDeniedDetails); ok {
			switch pd.GetReason() {
			case types.PermissionDeniedDetails_AGENT_BANNED, types.PermissionDeniedDetails_AGENT_NOT_ACTIVE:
				return true
			}
		}
	}
	return false
}

// authorize is ValidateAgent, and the first use of a renewed SVID makes it
// the node's current one (as SPIRE).
func (v *AgentValidator) authorize(ctx context.Context, id spiffeid.ID, svid *x509.Certificate) error {
	node, err := v.current(ctx, id, svid)
	if err != nil || node.CertSerial == svid.SerialNumber.String() {
		return err
	}
	if v.cache != nil {
		// A write follows: decide it on the datastore's record, not on
		// the cache's (which may miss a ban made an instant ago on
		// another server).
		node, err = v.check(ctx, id, svid, v.nodes.GetNode)
		if err != nil {
			return err
		}
		if node.CertSerial == svid.SerialNumber.String() {
			// Promoted meanwhile (another call or server); the cache
			// catches up by the store's notification or its poll.
			return nil
		}
	}
	sid := id.String()
	// The swap is conditional in the store: a ban or re-attestation that
	// landed since the read above (here or on another server) wins.
	_, err = v.nodes.PromoteNodeSerial(ctx, sid, node.NewCertSerial)
	switch {
	case errors.Is(err, datastore.ErrConflict):
		_, err := v.check(ctx, id, svid, v.nodes.GetNode)
		if err == nil {
			return nil // another call promoted it meanwhile
		}
		return err
	case err != nil:
		v.log.Warn("Unable to activate the new agent SVID", "agent_id", sid, "error", err)
		return status.Error(codes.Internal, "unable to activate the new agent SVID")
	}
	v.log.Debug("Activated renewed agent SVID", "agent_id", sid, "serial", node.NewCertSerial)
	return nil
}

// getNode reads the node from the cache when there is one, from the store
// otherwise or when the cache fails.
func (v *AgentValidator) getNode(ctx context.Context, sid string) (*datastore.AttestedNode, error) {
	if v.cache != nil {
		n, err := v.cache.GetNode(ctx, sid)
		if err == nil || errors.Is(err, datastore.ErrNotFound) {
			return n, err
		}
		v.log.Warn("Agent cache lookup failed; reading the datastore", "agent_id", sid, "error", err)
	}
	return v.nodes.GetNode(ctx, sid)
}

// check returns the node, read with get, when svid is acceptable for it:
// its serial is then the node's CertSerial or NewCertSerial.
func (v *AgentValidator) check(ctx context.Context, id spiffeid.ID, svid *x509.Certificate,
	get func(ctx context.Context, spiffeID string) (*datastore.AttestedNode, error)) (*datastore.AttestedNode, error) {
	sid := id.String()
	if svid == nil {
		return nil, agentDenied(types.PermissionDeniedDetails_AGENT_NOT_ATTESTED, "agent %q presented no X509-SVID", sid)
	}
	if v.clk.Now().After(svid.NotAfter) {
		return nil, agentDenied(types.PermissionDeniedDetails_AGENT_EXPIRED, "agent %q SVID is expired", sid)
	}
	node, err := get(ctx, sid)
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
	return apistatus.PermissionDenied(reason, fmt.Sprintf(format, args...))
}
