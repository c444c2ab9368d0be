package endpoints

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime/debug"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/server/api/rpccontext"
	"github.com/sigil-spiffe/sigil/internal/server/ratelimit"
)

// transport tells the interceptors which listener a call came in on.
type transport int

const (
	tcpTransport transport = iota
	localTransport
)

func (e *Endpoints) unaryInterceptor(t transport) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		start := time.Now()
		defer func() {
			if r := recover(); r != nil {
				e.log.Error("Panic in RPC handler", "method", info.FullMethod, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
				err = status.Error(codes.Internal, "internal error")
			}
			e.logCall(ctx, info.FullMethod, start, err)
		}()
		ctx, r, err := e.authorize(ctx, t, info.FullMethod)
		if err != nil {
			return nil, err
		}
		if t == tcpTransport && r.limit == signLimit {
			release, err := e.limiter.AcquireSign(ctx)
			if err != nil {
				return nil, limitErr("rejecting request due to signing rate limiting", err)
			}
			defer release()
		}
		return handler(ctx, req)
	}
}

func (e *Endpoints) streamInterceptor(t transport) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		start := time.Now()
		ctx := ss.Context()
		defer func() {
			if r := recover(); r != nil {
				e.log.Error("Panic in RPC handler", "method", info.FullMethod, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
				err = status.Error(codes.Internal, "internal error")
			}
			e.logCall(ctx, info.FullMethod, start, err)
		}()
		ctx, r, err := e.authorize(ctx, t, info.FullMethod)
		if err != nil {
			return err
		}
		ws := &wrappedStream{ServerStream: ss, ctx: ctx}
		if t == tcpTransport && r.limit != noLimit {
			ws.acquire = e.limiter.AcquireSign
			if r.limit == attestLimit {
				ws.acquire = e.limiter.AcquireAttest
			}
		}
		if t != tcpTransport || r.limit != attestLimit {
			err = handler(srv, ws)
			ws.releaseSlot()
			return err
		}

		// Attestation over TCP: refuse addresses with too many recent
		// failures; charge failures (not successes) to the address.
		addr, hasAddr := peerIP(ctx)
		if hasAddr {
			if lerr := e.limiter.CheckAttest(addr); lerr != nil {
				return limitErr("rejecting request due to attest agent rate limiting", lerr)
			}
		}
		err = handler(srv, ws)
		ws.releaseSlot()
		if hasAddr && isClientFailure(err) {
			e.limiter.AttestFailed(addr)
		}
		return err
	}
}

// isClientFailure reports whether err means the client presented bad
// attestation (as opposed to server trouble or a limit).
func isClientFailure(err error) bool {
	switch status.Code(err) {
	case codes.OK, codes.ResourceExhausted, codes.Internal, codes.Unavailable,
		codes.DeadlineExceeded, codes.Canceled, codes.Unimplemented:
		return false
	}
	return true
}

func limitErr(msg string, err error) error {
	if errors.Is(err, ratelimit.ErrLimited) {
		return status.Errorf(codes.ResourceExhausted, "%s: %v", msg, err)
	}
	if errors.Is(err, context.Canceled) {
		return status.Error(codes.Canceled, "request canceled while waiting for a work slot")
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return status.Error(codes.DeadlineExceeded, "deadline exceeded while waiting for a work slot")
	}
	return status.Errorf(codes.ResourceExhausted, "%s: %v", msg, err)
}

// wrappedStream carries the authorized context and, when acquire is set,
// holds a work slot only while the handler works: from a received message
// until the next send or receive, so a client that stalls mid-stream holds
// no slot.
type wrappedStream struct {
	grpc.ServerStream
	ctx     context.Context
	acquire func(context.Context) (func(), error)
	release func()
}

func (w *wrappedStream) Context() context.Context { return w.ctx }

func (w *wrappedStream) releaseSlot() {
	if w.release != nil {
		w.release()
		w.release = nil
	}
}

func (w *wrappedStream) SendMsg(m any) error {
	w.releaseSlot()
	return w.ServerStream.SendMsg(m)
}

func (w *wrappedStream) RecvMsg(m any) error {
	w.releaseSlot()
	if err := w.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if w.acquire != nil {
		release, err := w.acquire(w.ctx)
		if err != nil {
			return limitErr("rejecting request due to attestation rate limiting", err)
		}
		w.release = release
	}
	return nil
}

func peerIP(ctx context.Context) (netip.Addr, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return netip.Addr{}, false
	}
	switch a := p.Addr.(type) {
	case *net.TCPAddr:
		ip, ok := netip.AddrFromSlice(a.IP)
		return ip.Unmap(), ok
	default:
		ap, err := netip.ParseAddrPort(p.Addr.String())
		if err != nil {
			return netip.Addr{}, false
		}
		return ap.Addr().Unmap(), true
	}
}

// authorize establishes the caller and applies the method's rule. It
// returns the context carrying the rpccontext.Caller.
func (e *Endpoints) authorize(ctx context.Context, t transport, method string) (context.Context, rule, error) {
	r, ok := policy[method]
	if !ok {
		return ctx, r, status.Errorf(codes.PermissionDenied, "authorization denied for method %s", method)
	}
	caller := rpccontext.Caller{}
	if p, ok := peer.FromContext(ctx); ok {
		caller.Addr = p.Addr
		if t == tcpTransport {
			if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
				cert := ti.State.PeerCertificates[0]
				// The handshake verified the chain (verifyClientCert); read the ID.
				id, err := x509svid.IDFromCert(cert)
				if err != nil {
					return ctx, r, status.Errorf(codes.Unauthenticated, "client certificate is not an X509-SVID: %v", err)
				}
				caller.ID = id
				caller.X509SVID = cert
			}
		}
	}
	if t == localTransport {
		caller.Local = true
		caller.Admin = true
		caller.Addr = &net.UnixAddr{Net: "unix", Name: e.cfg.SocketPath}
	}

	allowed, err := e.evaluate(ctx, r, &caller)
	if err != nil {
		return ctx, r, err
	}
	if !allowed {
		return ctx, r, status.Errorf(codes.PermissionDenied, "authorization denied for method %s", method)
	}
	return rpccontext.WithCaller(ctx, caller), r, nil
}

func (e *Endpoints) evaluate(ctx context.Context, r rule, c *rpccontext.Caller) (bool, error) {
	if r.any {
		return true, nil
	}
	if r.local && c.Local {
		return true, nil
	}
	if c.Local || c.ID.IsZero() {
		// Agent, admin and downstream rights need an X509-SVID over TCP.
		return false, nil
	}
	if r.admin || r.downstream {
		admin := slices.Contains(e.cfg.AdminIDs, c.ID)
		var down bool
		if e.cfg.Entries != nil {
			a, d, err := e.cfg.Entries.AdminAndDownstream(ctx, c.ID)
			if err != nil {
				e.log.Error("Failed to look up caller entries", "caller_id", c.ID.String(), "error", err)
				return false, status.Error(codes.Internal, "failed to fetch caller entries")
			}
			admin = admin || a
			down = d
		}
		c.Admin, c.Downstream = admin, down
		if (r.admin && admin) || (r.downstream && down) {
			return true, nil
		}
	}
	if r.agent {
		if err := e.authorizeAgent(ctx, c.ID, c.X509SVID); err != nil {
			return false, err
		}
		c.Agent = true
		return true, nil
	}
	return false, nil
}

// authorizeAgent checks that id is an attested, non-banned agent using its
// current SVID; the first use of a renewed SVID makes it current.
func (e *Endpoints) authorizeAgent(ctx context.Context, id spiffeid.ID, svid *x509.Certificate) error {
	sid := id.String()
	if e.clk.Now().After(svid.NotAfter) {
		return agentDenied(types.PermissionDeniedDetails_AGENT_EXPIRED, "agent %q SVID is expired", sid)
	}
	node, err := e.cfg.Nodes.GetNode(ctx, sid)
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return agentDenied(types.PermissionDeniedDetails_AGENT_NOT_ATTESTED, "agent %q is not attested", sid)
	case err != nil:
		e.log.Error("Unable to look up agent information", "agent_id", sid, "error", err)
		return status.Error(codes.Internal, "unable to look up agent information")
	}
	serial := svid.SerialNumber.String()
	switch {
	case node.CertSerial == "":
		return agentDenied(types.PermissionDeniedDetails_AGENT_BANNED, "agent %q is banned", sid)
	case node.CertSerial == serial:
		return nil
	case node.NewCertSerial != "" && node.NewCertSerial == serial:
		_, err := e.cfg.Nodes.UpdateNode(ctx, &datastore.AttestedNode{
			SPIFFEID:     sid,
			CertSerial:   node.NewCertSerial,
			CertNotAfter: node.NewCertNotAfter,
		}, &datastore.NodeMask{CertSerial: true, CertNotAfter: true, NewCertSerial: true, NewCertNotAfter: true})
		if err != nil {
			e.log.Warn("Unable to activate the new agent SVID", "agent_id", sid, "error", err)
			return status.Error(codes.Internal, "unable to activate the new agent SVID")
		}
		e.log.Debug("Activated renewed agent SVID", "agent_id", sid, "serial", serial)
		return nil
	default:
		return agentDenied(types.PermissionDeniedDetails_AGENT_NOT_ACTIVE, "agent %q expected to have serial number %q; has %q", sid, node.CertSerial, serial)
	}
}

func agentDenied(reason types.PermissionDeniedDetails_Reason, format string, args ...any) error {
	st := status.Newf(codes.PermissionDenied, format, args...)
	if d, err := st.WithDetails(&types.PermissionDeniedDetails{Reason: reason}); err == nil {
		st = d
	}
	return st.Err()
}

func (e *Endpoints) logCall(ctx context.Context, method string, start time.Time, err error) {
	attrs := []any{"method", method, "code", status.Code(err).String(), "duration", time.Since(start)}
	if c, ok := rpccontext.CallerFrom(ctx); ok && !c.ID.IsZero() {
		attrs = append(attrs, "caller_id", c.ID.String())
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		attrs = append(attrs, "caller_addr", p.Addr.String())
	}
	if err != nil {
		attrs = append(attrs, "error", status.Convert(err).Message())
	}
	e.log.DebugContext(ctx, "RPC", attrs...)
}
