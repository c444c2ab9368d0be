package client_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/agent/client"
)

func TestUnreachable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{status.Error(codes.Unavailable, "connection refused"), true},
		{fmt.Errorf("new JWT-SVID: %w", status.Error(codes.DeadlineExceeded, "timeout")), true},
		{fmt.Errorf("call: %w", context.DeadlineExceeded), true},
		// The session ended and the agent closed the connection under the call.
		{fmt.Errorf("new JWT-SVID: %w", status.Error(codes.Canceled, "grpc: the client connection is closing")), true},
		{status.Error(codes.NotFound, "entry not found"), false},
		{status.Error(codes.PermissionDenied, "denied"), false},
		{errors.New("response carries no token"), false},
		{nil, false},
	} {
		if got := client.Unreachable(tc.err); got != tc.want {
			t.Errorf("Unreachable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
