package server

import (
	"context"
	"crypto/x509"
	"log/slog"

	"github.com/sigil-spiffe/sigil/internal/ca"
	servercatalog "github.com/sigil-spiffe/sigil/internal/catalog/server"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/datastore/dsmetrics"
	agentapi "github.com/sigil-spiffe/sigil/internal/server/api/agent"
	svidapi "github.com/sigil-spiffe/sigil/internal/server/api/svid"
	"github.com/sigil-spiffe/sigil/internal/server/audit"
	"github.com/sigil-spiffe/sigil/internal/server/entrycache"
	"github.com/sigil-spiffe/sigil/internal/telemetry"
)

// meteredStore wraps the datastore so every operation is timed
// (dsmetrics); a store that is not a sqlstore is returned as is.
//
// "*dsmetrics.Store does not implement DataStore (missing method X)"
// here means sqlstore gained a method: run
// go generate ./internal/datastore/dsmetrics.
func meteredStore(ds servercatalog.DataStore, m *telemetry.Server) servercatalog.DataStore {
	if in, ok := ds.(dsmetrics.Inner); ok && m != nil {
		return dsmetrics.Wrap(in, m)
	}
	return ds
}

// svidSigner counts the svid API's signatures by kind.
type svidSigner struct {
	svidapi.Signer
	m *telemetry.Server
}

var _ svidapi.Signer = svidSigner{}

func (s svidSigner) SignX509SVID(ctx context.Context, p ca.X509SVIDParams) ([]*x509.Certificate, error) {
	chain, err := s.Signer.SignX509SVID(ctx, p)
	if err == nil {
		s.m.SVIDSigned(telemetry.SVIDKindX509)
	}
	return chain, err
}

func (s svidSigner) SignJWTSVID(ctx context.Context, p ca.JWTSVIDParams) (string, error) {
	tok, err := s.Signer.SignJWTSVID(ctx, p)
	if err == nil {
		s.m.SVIDSigned(telemetry.SVIDKindJWT)
	}
	return tok, err
}

func (s svidSigner) SignDownstreamX509CA(ctx context.Context, p ca.DownstreamX509CAParams) ([]*x509.Certificate, error) {
	chain, err := s.Signer.SignDownstreamX509CA(ctx, p)
	if err == nil {
		s.m.SVIDSigned(telemetry.SVIDKindDownstreamCA)
	}
	return chain, err
}

// agentSigner counts the agent SVIDs the agent API signs.
type agentSigner struct {
	ca *ca.Manager
	m  *telemetry.Server
}

var _ agentapi.Signer = agentSigner{}

func (s agentSigner) SignX509SVID(ctx context.Context, p ca.X509SVIDParams) ([]*x509.Certificate, error) {
	chain, err := s.ca.SignX509SVID(ctx, p)
	if err == nil {
		s.m.SVIDSigned(telemetry.SVIDKindAgent)
	}
	return chain, err
}

// auditLog is the audit logger when audit_log_enabled (SPIRE: to the
// server's log), else nil.
func auditLog(cfg *config.Server, log *slog.Logger) *audit.Logger {
	if !cfg.AuditLogEnabled {
		return nil
	}
	return audit.New(log)
}

// serverState reads the state gauges from memory: the entry cache and the
// CA.
func serverState(cache *entrycache.Cache, m *ca.Manager) func() telemetry.ServerState {
	return func() telemetry.ServerState {
		var st telemetry.ServerState
		st.Entries, st.Agents, st.BannedAgents = cache.Counts()
		x, j := m.ActiveValidity()
		st.X509CA.NotBefore, st.X509CA.NotAfter = x.NotBefore, x.NotAfter
		st.JWTKey.NotBefore, st.JWTKey.NotAfter = j.NotBefore, j.NotAfter
		return st
	}
}
