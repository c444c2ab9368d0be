package client

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
)

// Unreachable reports whether err (or an error it wraps) means the call
// never got an answer from the server: Unavailable (no connection, the
// server stopping) or DeadlineExceeded (no answer in time). A server that
// answered, even with an error, was reachable.
func Unreachable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	st, ok := serverStatus(err)
	if !ok {
		return false
	}
	return st.Code() == codes.Unavailable || st.Code() == codes.DeadlineExceeded
}
