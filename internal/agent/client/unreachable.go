package client

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
)

// Unreachable reports whether err (or an error it wraps) means the call
// never got an answer from the server: Unavailable (no connection, the
// server stopping), DeadlineExceeded (no answer in time) or Canceled (the
// agent closed the connection under the call as its session with the
// server ended). A server that answered, even with an error, was
// reachable. Callers whose own context can be canceled check it first.
func Unreachable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	st, ok := serverStatus(err)
	if !ok {
		return false
	}
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return true
	}
	return false
}
