package endpoints

import (
	"context"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/peercred"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// Caller is an attested caller: the process that connected and the
// selectors the workload attestors gave it.
type Caller struct {
	Cred      peercred.Cred
	Selectors selector.Set
}

// CallObserver is told about every finished call on the agent socket:
// its full gRPC method name, its status code and how long it took (for a
// stream, until the handler returned). It must be cheap and safe for
// concurrent use.
type CallObserver interface {
	CallDone(fullMethod string, code codes.Code, elapsed time.Duration)
}

// call is one call's attestation state, kept in its context.
type call struct {
	mw     *middleware
	method string

	once   sync.Once
	caller Caller
	err    error
}

type callKey struct{}

// Attest returns the caller of the call whose context ctx is (or derives
// from), attesting it on the first use in the call. Its errors are gRPC
// status errors to return as they are: Internal when the peer's
// credentials are unknown, Unavailable when every workload attestor failed
// (naming them), PermissionDenied when the process exited or its PID was
// reused during attestation, ctx's own error when the caller went away.
func Attest(ctx context.Context) (Caller, error) {
	c, ok := ctx.Value(callKey{}).(*call)
	if !ok {
		return Caller{}, status.Error(codes.Internal, "call was not received through the agent endpoints")
	}
	c.once.Do(func() { c.caller, c.err = c.mw.attest(ctx, c.method) })
	return c.caller, c.err
}

type middleware struct {
	attestor Attestor
	observer CallObserver
	log      *slog.Logger
}

func (m *middleware) attest(ctx context.Context, method string) (Caller, error) {
	cred, ok := peercred.FromContext(ctx)
	if !ok {
		err := peercred.ErrorFromContext(ctx)
		m.log.Error("Cannot identify caller", "method", method, "error", err)
		return Caller{}, status.Errorf(codes.Internal, "cannot read caller credentials: %v", err)
	}
	sels, err := m.attestor.Attest(ctx, cred.PID)
	if err != nil {
		if ctx.Err() != nil {
			return Caller{}, status.FromContextError(ctx.Err()).Err()
		}
		// The attestors logged each plugin's failure; the caller learns
		// which plugins failed, not their errors.
		return Caller{}, status.Error(codes.Unavailable, err.Error())
	}
	set := make(selector.Set, len(sels))
	for _, sel := range sels {
		set[sel] = struct{}{}
	}
	// PID reuse guard: the selectors must describe the process that
	// connected, so its PID must still name the same process now that
	// attestation (which read /proc/<pid>) is done.
	if err := cred.StillAlive(); err != nil {
		m.log.Warn("Caller changed during attestation", "method", method, "pid", cred.PID, "error", err)
		return Caller{}, status.Error(codes.PermissionDenied, "caller process exited or was replaced during attestation")
	}
	if m.log.Enabled(ctx, slog.LevelDebug) {
		m.log.Debug("Attested caller", "method", method, "pid", cred.PID, "uid", cred.UID, "selectors", len(set))
	}
	return Caller{Cred: cred, Selectors: set}, nil
}

func (m *middleware) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	start := time.Now()
	defer func() {
		if r := recover(); r != nil {
			err = m.recovered(info.FullMethod, r)
		}
		m.done(info.FullMethod, err, start)
	}()
	return handler(context.WithValue(ctx, callKey{}, &call{mw: m, method: info.FullMethod}), req)
}

func (m *middleware) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	start := time.Now()
	defer func() {
		if r := recover(); r != nil {
			err = m.recovered(info.FullMethod, r)
		}
		m.done(info.FullMethod, err, start)
	}()
	ctx := context.WithValue(ss.Context(), callKey{}, &call{mw: m, method: info.FullMethod})
	return handler(srv, &serverStream{ServerStream: ss, ctx: ctx})
}

// recovered turns a handler's panic into the call's Internal error.
func (m *middleware) recovered(method string, r any) error {
	m.log.Error("Call handler panicked; the call fails with Internal", "method", method, "panic", r, "stack", string(debug.Stack()))
	return status.Error(codes.Internal, "internal error")
}

func (m *middleware) done(method string, err error, start time.Time) {
	if m.observer == nil {
		return
	}
	m.observer.CallDone(method, status.Code(err), time.Since(start))
}

// serverStream carries the call state in the stream's context.
type serverStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *serverStream) Context() context.Context { return s.ctx }
