// Package apistatus builds the per-item results and errors of the server
// APIs the way SPIRE does: "OK" statuses, "<message>: <cause>" texts, and a
// log line for every refused or failed call (error level for Internal).
//
// Client input in these texts must be quoted with clip.Quote where it
// is formatted (at most clip.Max bytes of it). As a backstop,
// every text this package sends or logs is cut at MaxText bytes.
package apistatus

import (
	"context"
	"log/slog"

	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/clip"
)

// MaxText bounds a status message or logged error text (a backstop for
// client input wrapped deep inside an error).
const MaxText = 512

// OK is SPIRE's success status of a batch item.
func OK() *types.Status { return &types.Status{Code: int32(codes.OK), Message: "OK"} }

// New is a batch item's status: msg, followed by err's text when err is set.
func New(code codes.Code, msg string, err error) *types.Status {
	return &types.Status{Code: int32(code), Message: text(msg, err)}
}

// Error is a call's gRPC error with New's text, logged on log (as an error
// for Internal, at debug level for a rejected request).
func Error(log *slog.Logger, api string, code codes.Code, msg string, err error) error {
	msg = text(msg, err)
	if code == codes.Internal {
		log.Error(api+" API error", "error", msg)
	} else {
		log.Debug(api+" API request rejected", "code", code.String(), "error", msg)
	}
	return status.Error(code, msg)
}

func text(msg string, err error) string {
	if err != nil {
		msg += ": " + err.Error()
	}
	return clip.Cut(msg, MaxText)
}

// Fail is a call's gRPC error for the agent-facing services: msg (and
// cause, except for Internal errors, whose cause is logged but never sent
// to the client), logged on log with the code and cause (as an error for
// Internal, at debug level for a rejected request).
func Fail(ctx context.Context, log *slog.Logger, code codes.Code, msg string, cause error) error {
	return status.Error(code, failed(ctx, log, code, msg, cause))
}

// FailItem is Fail for a batch item: the same log line and text, as the
// item's status.
func FailItem(ctx context.Context, log *slog.Logger, code codes.Code, msg string, cause error) *types.Status {
	return &types.Status{Code: int32(code), Message: failed(ctx, log, code, msg, cause)}
}

func failed(ctx context.Context, log *slog.Logger, code codes.Code, msg string, cause error) string {
	attrs := []any{"code", code.String()}
	if cause != nil {
		attrs = append(attrs, "error", clip.Cut(cause.Error(), MaxText))
	}
	if code == codes.Internal {
		log.ErrorContext(ctx, msg, attrs...)
		return clip.Cut(msg, MaxText)
	}
	log.DebugContext(ctx, msg, attrs...)
	return text(msg, cause)
}

// PermissionDenied is a PermissionDenied error carrying SPIRE's
// PermissionDeniedDetails reason, which agents act upon (a banned agent
// stops, an agent whose SVID is not active re-attests).
func PermissionDenied(reason types.PermissionDeniedDetails_Reason, msg string) error {
	st := status.New(codes.PermissionDenied, msg)
	if d, err := st.WithDetails(&types.PermissionDeniedDetails{Reason: reason}); err == nil {
		st = d
	}
	return st.Err()
}
