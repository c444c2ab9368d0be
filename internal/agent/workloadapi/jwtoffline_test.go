package workloadapi_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
)

// TestFetchJWTSVIDOfflineError: when the minter says the server is
// unreachable and nothing is cached for the audience, the caller gets
// Unavailable with that precise reason, not a generic failure.
func TestFetchJWTSVIDOfflineError(t *testing.T) {
	e := startEnv(t, envOpts{})
	now := e.clk.Now()
	id := mustID(t, "/offline")
	e.addIdentity(t, []*cache.Entry{entry("o", id, now, uidSelector())}, nil)
	e.minter.failWith(fmt.Errorf("server unreachable; %w", &cache.NoJWTSVIDError{ID: id, Audience: []string{"new-aud"}, Now: now}))
	_, err := workloadapi.FetchJWTSVID(ctxT(t), jwtsvid.Params{Audience: "new-aud"}, workloadapi.WithAddr(e.addr))
	want := `server unreachable; no cached JWT-SVID for audience "new-aud" of spiffe://example.org/offline`
	if st, _ := status.FromError(err); st.Code() != codes.Unavailable || st.Message() != want {
		t.Fatalf("FetchJWTSVID offline: %v; want Unavailable %q", err, want)
	}
	// Another failure stays generic.
	e.minter.failWith(errors.New("boom"))
	_, err = workloadapi.FetchJWTSVID(ctxT(t), jwtsvid.Params{Audience: "new-aud"}, workloadapi.WithAddr(e.addr))
	if st, _ := status.FromError(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "could not fetch") {
		t.Fatalf("FetchJWTSVID failing: %v", err)
	}
}
