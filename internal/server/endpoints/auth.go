package endpoints

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime/debug"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

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
			e.metrics.RPC(info.FullMethod, status.Code(err).String(), time.Since(start))
			e.auditCall(ctx, t, info.FullMethod, req, resp, err)
		}()
		ctx, r, err := e.authorize(ctx, t, info.FullMethod)
		if err != nil {
			return nil, err
		}
		if t == tcpTransport && r.limit == signLimit {
			release, err := e.limiter.AcquireSign(ctx)
			if err != nil {
				return nil, e.limited(signingLimit, limitErr("rejecting request due to signing rate limiting", err))
			}
			defer release()
		}
		return handler(ctx, req)
	}
}

// streamInterceptor authorizes, rate limits and logs stream calls. The
// handler's context is also cancelled, with shutdown's cause, when shutdown
// is done (the endpoints are stopping); a handler then ending with
// codes.Canceled is reported to the client as that cause (Unavailable).
func (e *Endpoints) streamInterceptor(t transport, shutdown context.Context) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		start := time.Now()
		ctx := ss.Context()
		var ws *wrappedStream
		defer func() {
			if r := recover(); r != nil {
				e.log.Error("Panic in RPC handler", "method", info.FullMethod, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
				err = status.Error(codes.Internal, "internal error")
			}
			if status.Code(err) == codes.Canceled && shutdown.Err() != nil && ss.Context().Err() == nil {
				err = context.Cause(shutdown)
			}
			e.logCall(ctx, info.FullMethod, start, err)
			e.metrics.RPC(info.FullMethod, status.Code(err).String(), time.Since(start))
			e.auditCall(ctx, t, info.FullMethod, ws.request(), ws.response(), err)
		}()
		ctx, r, err := e.authorize(ctx, t, info.FullMethod)
		if err != nil {
			return err
		}
		defer e.metrics.StreamStarted(info.FullMethod)()
		ctx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		stopFollowing := context.AfterFunc(shutdown, func() { cancel(context.Cause(shutdown)) })
		defer stopFollowing()
		ws = &wrappedStream{ServerStream: ss, ctx: ctx, ep: e}
		if r.limit != attestLimit {
			if t == tcpTransport && r.limit == signLimit {
				ws.acquire = e.limiter.AcquireSign
			}
			err = handler(srv, ws)
			ws.releaseSlot()
			return err
		}

		// Attestation. The whole exchange is bounded in time
		// (ratelimit.Exchange): a client that stalls, whichever message it
		// owes, is cut and its stream released. Over TCP, the handler
		// checks the credential in one of the source's check slots and does
		// the expensive work in a server-wide work slot
		// (rpccontext.Stages); nothing refuses it for its source, unless
		// too many of the source's exchanges are stalled mid-challenge.
		// Failures are charged to the source, and once its budget is spent
		// their answers are held back.
		from, hasAddr := peerAddr(ctx)
		addr := from.Addr()
		xctx, endExchange := e.limiter.Exchange(ctx)
		defer endExchange()
		ws.ctx, ws.bounded = xctx, true
		if t == tcpTransport && hasAddr {
			ws.ctx = rpccontext.WithStages(xctx, stages{e: e, from: from, ws: ws})
		}
		err = handler(srv, ws)
		endExchange()
		timedOut := err != nil && errors.Is(context.Cause(xctx), ratelimit.ErrExchangeTimeout) && ss.Context().Err() == nil
		if timedOut {
			// Whatever the handler made of its cut stream: the client
			// took too long. Logged as a failure, not charged (holding
			// the answer back would keep the stream longer).
			err = status.Errorf(codes.DeadlineExceeded, "attestation did not complete within %s", e.limiter.MaxExchange())
		}
		e.metrics.Attestation(ws.attType, attestationResult(err), time.Since(start))
		if timedOut || ws.stalledRefusal {
			// Cut, or refused because the source has too many exchanges
			// stalled mid-challenge: logged like a failure, not charged.
			e.failures.failed(ctx, t, addr, ws.attType, status.Convert(err).Message(), 0)
			return err
		}
		if !isClientFailure(err) {
			return err
		}
		var penalty time.Duration
		if t == tcpTransport && hasAddr {
			penalty = e.limiter.AttestFailed(addr)
		}
		e.failures.failed(ctx, t, addr, ws.attType, status.Convert(err).Message(), penalty)
		if penalty > 0 {
			e.metrics.FailureHeld()
		}
		e.limiter.Hold(ctx, penalty)
		return err
	}
}

// stages implements rpccontext.Stages with the limiter, for one caller.
type stages struct {
	e    *Endpoints
	from netip.AddrPort
	ws   *wrappedStream // notes a refusal by Await
}

func (s stages) Check(ctx context.Context) (func(), error) {
	release, err := s.e.limiter.AcquireCheck(ctx, s.from)
	if err != nil {
		return nil, s.e.limited(attestationLimit, limitErr("rejecting request due to attestation rate limiting", err))
	}
	return release, nil
}

func (s stages) Await(context.Context) (func(), error) {
	release, err := s.e.limiter.AwaitAnswer(s.from)
	if err != nil {
		s.ws.stalledRefusal = true
		return nil, s.e.limited(attestationLimit, limitErr("rejecting request due to attestation rate limiting", err))
	}
	return release, nil
}

func (s stages) Work(ctx context.Context) (func(), error) {
	release, err := s.e.limiter.AcquireAttest(ctx)
	if err != nil {
		return nil, s.e.limited(attestationLimit, limitErr("rejecting request due to attestation rate limiting", err))
	}
	return release, nil
}

// The limit label of Metrics.RateLimited.
const (
	attestationLimit = "attestation"
	signingLimit     = "signing"
)

// limited reports err to the metrics when it refuses a request for a
// rate limit (ResourceExhausted), and returns it.
func (e *Endpoints) limited(limit string, err error) error {
	if status.Code(err) == codes.ResourceExhausted {
		e.metrics.RateLimited(limit)
	}
	return err
}

// Attestation results, as Metrics.Attestation reports them.
const (
	attestSuccess = "success"
	attestFailure = "failure"
	attestError   = "error"
)

// attestationResult classifies an AttestAgent outcome: refused (the
// client's fault, see isClientFailure), or not completed by the server.
func attestationResult(err error) string {
	switch {
	case err == nil:
		return attestSuccess
	case isClientFailure(err):
		return attestFailure
	}
	return attestError
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
// no slot. It notes the attestation type of an AttestAgent call (for the
// failure log). When bounded, a receive also ends when ctx does (the
// exchange's deadline), so the handler can return and release the stream.
type wrappedStream struct {
	grpc.ServerStream
	ctx     context.Context
	acquire func(context.Context) (func(), error)
	release func()
	attType string
	ep      *Endpoints

	bounded bool
	// abandoned: a receive was left behind when ctx ended; the stream is
	// not read again.
	abandoned bool
	// stalledRefusal: Await refused the call (its source has too many
	// exchanges waiting on their clients).
	stalledRefusal bool
	// firstReq and attestResp are what the audit log reads (kept only
	// when it is enabled): the first message received, the last
	// AttestAgentResponse sent.
	firstReq   any
	attestResp *agentv1.AttestAgentResponse
}

// request is the stream's first message, for the audit log (nil if none,
// or w nil: the call was refused before it began).
func (w *wrappedStream) request() any {
	if w == nil {
		return nil
	}
	return w.firstReq
}

// response is the last AttestAgentResponse sent, for the audit log.
func (w *wrappedStream) response() any {
	if w == nil || w.attestResp == nil {
		return nil
	}
	return w.attestResp
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
	if r, ok := m.(*agentv1.AttestAgentResponse); ok && w.ep.audit != nil {
		w.attestResp = r
	}
	return w.ServerStream.SendMsg(m)
}

func (w *wrappedStream) RecvMsg(m any) error {
	w.releaseSlot()
	recv := w.ServerStream.RecvMsg
	if w.bounded {
		recv = w.recvBounded
	}
	if err := recv(m); err != nil {
		return err
	}
	if r, ok := m.(*agentv1.AttestAgentRequest); ok && w.attType == "" {
		w.attType = r.GetParams().GetData().GetType()
	}
	if w.firstReq == nil && w.ep.audit != nil {
		w.firstReq = m
	}
	if w.acquire != nil {
		release, err := w.acquire(w.ctx)
		if err != nil {
			return w.ep.limited(signingLimit, limitErr("rejecting request due to signing rate limiting", err))
		}
		w.release = release
	}
	return nil
}

// recvBounded receives into m unless ctx ends first. gRPC's RecvMsg does
// not follow a context derived from the stream's, so it runs on its own
// goroutine; one left behind returns when the handler has returned and
// gRPC ends the stream, and never touches m after that (the handler
// drops m on error).
func (w *wrappedStream) recvBounded(m any) error {
	if w.abandoned {
		return ctxStatus(w.ctx)
	}
	done := make(chan error, 1)
	go func() { done <- w.ServerStream.RecvMsg(m) }()
	select {
	case err := <-done:
		return err
	case <-w.ctx.Done():
		w.abandoned = true
		return ctxStatus(w.ctx)
	}
}

// ctxStatus is the status error of a done context: its cause when that is
// a status (a stopping server), else DeadlineExceeded or Canceled.
func ctxStatus(ctx context.Context) error {
	cause := context.Cause(ctx)
	if _, ok := status.FromError(cause); ok {
		return cause
	}
	if errors.Is(cause, ratelimit.ErrExchangeTimeout) || errors.Is(cause, context.DeadlineExceeded) {
		return status.Error(codes.DeadlineExceeded, "attestation exchange timed out")
	}
	return status.Error(codes.Canceled, "call canceled")
}

// peerAddr is the caller's TCP address (IPv4-mapped addresses unmapped).
func peerAddr(ctx context.Context) (netip.AddrPort, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return netip.AddrPort{}, false
	}
	var ap netip.AddrPort
	switch a := p.Addr.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	default:
		var err error
		if ap, err = netip.ParseAddrPort(p.Addr.String()); err != nil {
			return netip.AddrPort{}, false
		}
	}
	if !ap.Addr().IsValid() {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
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
		var admin, down bool
		if e.cfg.Entries != nil {
			var err error
			admin, down, err = e.cfg.Entries.AdminAndDownstream(ctx, c.ID)
			if err != nil {
				e.log.Error("Failed to look up caller entries", "caller_id", c.ID.String(), "error", err)
				return false, status.Error(codes.Internal, "failed to fetch caller entries")
			}
		}
		c.Admin, c.Downstream = admin, down
		if (r.admin && admin) || (r.downstream && down) {
			return true, nil
		}
	}
	if r.agent {
		if err := e.agents.authorize(ctx, c.ID, c.X509SVID); err != nil {
			return false, err
		}
		c.Agent = true
		return true, nil
	}
	return false, nil
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
