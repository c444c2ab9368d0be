// Package audit writes sigil-server's audit log (SPIRE's
// audit_log_enabled): one structured line per call of the server APIs,
// admin and agent alike, and one per item of a batch call, with the
// caller, the method, the request's identifying fields and the result.
//
// The lines go to the server's log, at INFO, with message "API accessed"
// and SPIRE's field names: type=audit, request_id (one per call, shared by
// the lines of a batch), service (without "spire.api.server."), method,
// status (success or error) with status_code and status_message on error;
// the caller as caller_uid, caller_gid and caller_path on the admin socket,
// caller_addr and caller_id (the X509-SVID's SPIFFE ID, if any) over TCP;
// then the request's fields (spiffe_id, parent_id, selectors, entry_id,
// agent_id, trust_domain_id, …).
//
// Never logged: join tokens (CreateJoinToken's token, AttestAgent's
// payload), keys, CSRs, JWT-SVIDs, attestation data and challenge answers.
// Every value that came from the client is cut to MaxValue bytes.
package audit

import (
	"context"
	"log/slog"
	"strings"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/clip"
)

// Message is the message of every audit line.
const Message = "API accessed"

// Caller identifies who called, as the endpoints established it.
type Caller struct {
	// Local calls came over the admin socket: the calling process's
	// credentials, as the kernel reported them (HasCred false when it
	// could not), and its executable (Path, "" when unknown).
	Local    bool
	HasCred  bool
	UID, GID uint32
	Path     string
	// Addr is the TCP peer address; ID the SPIFFE ID of the X509-SVID it
	// presented ("" if none).
	Addr string
	ID   string
}

// Call is one finished API call.
type Call struct {
	// FullMethod is the gRPC method (/spire.api.server.entry.v1.Entry/…).
	FullMethod string
	Caller     Caller
	// Request is the unary request, or a stream's first message (nil if
	// none arrived). Response is the unary response, or the stream's last
	// message the extractors need (nil if none).
	Request, Response any
	// Err is the call's error (nil on success).
	Err error
}

// Logger writes audit lines. A nil *Logger writes nothing.
type Logger struct {
	log *slog.Logger
}

// New returns a Logger writing to log.
func New(log *slog.Logger) *Logger {
	if log == nil {
		return nil
	}
	return &Logger{log: log}
}

// Audited reports whether calls of fullMethod are audited: every method of
// the server APIs; not gRPC health checks or reflection.
func Audited(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/spire.api.server.")
}

// Log writes the audit lines of c: one, or one per item of a batch call
// that succeeded as a whole.
func (l *Logger) Log(ctx context.Context, c Call) {
	if l == nil || !Audited(c.FullMethod) {
		return
	}
	service, method := names(c.FullMethod)
	common := []slog.Attr{
		slog.String("type", "audit"),
		slog.String("request_id", uuid.NewString()),
		slog.String("service", service),
		slog.String("method", method),
	}
	common = append(common, callerAttrs(c.Caller)...)
	x := extract(c)
	if c.Err != nil || x.items == nil {
		attrs := append(common, resultAttrs(status.Convert(c.Err))...)
		attrs = append(attrs, x.fields...)
		l.log.LogAttrs(ctx, slog.LevelInfo, Message, attrs...)
		return
	}
	for _, it := range x.items {
		attrs := append(append([]slog.Attr{}, common...), resultAttrs(it.status)...)
		attrs = append(attrs, x.fields...)
		attrs = append(attrs, it.fields...)
		l.log.LogAttrs(ctx, slog.LevelInfo, Message, attrs...)
	}
	if len(x.items) == 0 {
		// An empty batch: still one line (SPIRE writes none).
		l.log.LogAttrs(ctx, slog.LevelInfo, Message, append(common, resultAttrs(nil)...)...)
	}
}

// names splits a full method into SPIRE's service and method fields.
func names(fullMethod string) (service, method string) {
	s := strings.TrimPrefix(fullMethod, "/")
	service, method, _ = strings.Cut(s, "/")
	return strings.TrimPrefix(service, "spire.api.server."), method
}

func callerAttrs(c Caller) []slog.Attr {
	var out []slog.Attr
	if c.Local {
		if c.HasCred {
			out = append(out, slog.Uint64("caller_uid", uint64(c.UID)), slog.Uint64("caller_gid", uint64(c.GID)))
		}
		if c.Path != "" {
			out = append(out, slog.String("caller_path", c.Path))
		}
		return out
	}
	if c.Addr != "" {
		out = append(out, slog.String("caller_addr", c.Addr))
	}
	if c.ID != "" {
		out = append(out, slog.String("caller_id", c.ID))
	}
	return out
}

// resultAttrs are status, and status_code and status_message on error.
// st nil or OK is success.
func resultAttrs(st *status.Status) []slog.Attr {
	if st == nil || st.Code() == codes.OK {
		return []slog.Attr{slog.String("status", "success")}
	}
	return []slog.Attr{
		slog.String("status", "error"),
		slog.String("status_code", st.Code().String()),
		slog.String("status_message", clip.Cut(st.Message(), 4*clip.Max)),
	}
}

// MaxValue bounds each value of an audit line that the client sent: long
// enough for the agent IDs of Sigil's node attestors and usual SPIFFE IDs,
// selectors and trust domains.
const MaxValue = 2 * clip.Max

// str is a field holding client input, cut to MaxValue bytes.
func str(key, v string) slog.Attr { return slog.String(key, clip.Cut(v, MaxValue)) }

// list joins client-sent values with commas, cut to MaxValue bytes.
func list(key string, vs []string) slog.Attr {
	return slog.String(key, clip.Cut(strings.Join(vs, ","), MaxValue))
}

// server is a field the server produced (an issued SVID's SPIFFE ID).
func server(key, v string) slog.Attr { return slog.String(key, v) }

func i32(key string, v int32) slog.Attr { return slog.Int64(key, int64(v)) }
