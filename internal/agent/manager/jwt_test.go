package manager_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/clock"
)

// TestMintJWTSVIDOnlineAndOffline: connected, a JWT-SVID is served from
// the cache until its half-life and minted again after it. With the server
// gone (and across an agent restart) the cached token for the same
// audience set is served past its half-life, until 30 s before exp, never
// after; a new audience gets the precise error; Status counts the tokens
// it can still serve. (The server's JWT-SVID TTL is 5 minutes.)
func TestMintJWTSVIDOnlineAndOffline(t *testing.T) {
	clk := clock.NewFake(time.Now().Truncate(time.Second))
	srv := newTestServer(t, serverOpts{clock: clk})
	token, agentID := srv.createToken()
	wl := spiffeid.RequireFromPath(td, "/workload/jwt-offline")
	srv.createEntry(agentID, wl.Path(), "7100")
	dir := t.TempDir()
	a := startAgent(t, srv, dir, agentOpts{token: token, clock: clk})
	entry := a.waitIdentity("7100", wl).Entry
	ctx := context.Background()
	mint := func(a *testAgent, aud ...string) (string, error) { return a.m.MintJWTSVID(ctx, entry, aud) }

	first, err := mint(a, "svc-a", "svc-b")
	if err != nil {
		t.Fatalf("mint: %v", err)
	}
	// (go-spiffe's jwtsvid checks iat and exp against the real clock; the
	// token's are the fake clock's.)
	svid, err := cache.JWTSVIDFromToken(first, wl, []string{"svc-a", "svc-b"})
	if err != nil {
		t.Fatalf("minted token: %v", err)
	}
	exp := svid.ExpiresAt
	if life := exp.Sub(clk.Now()); life < 4*time.Minute || life > 6*time.Minute {
		t.Fatalf("token lives %s, want the server's 5m", life)
	}

	// Online: the same token before half-life, a new one after.
	clk.Add(2 * time.Minute)
	if again, err := mint(a, "svc-b", "svc-a", "svc-b"); err != nil || again != first {
		t.Fatalf("before half-life: a new token or %v", err)
	}
	clk.Add(time.Minute)
	current, err := mint(a, "svc-a", "svc-b")
	if err != nil || current == first {
		t.Fatalf("past half-life while connected: the old token or %v", err)
	}
	cur, err := cache.JWTSVIDFromToken(current, wl, []string{"svc-a", "svc-b"})
	if err != nil {
		t.Fatal(err)
	}
	exp = cur.ExpiresAt

	// The server goes away; past the token's half-life it is still served.
	srv.stop()
	eventually(t, "degraded status", func() bool { return !a.m.Status().Connected })
	clk.Add(3 * time.Minute)
	if got, err := mint(a, "svc-a", "svc-b"); err != nil || got != current {
		t.Fatalf("offline past half-life: %v (same token %v)", err, got == current)
	}
	_, err = mint(a, "svc-new")
	var none *cache.NoJWTSVIDError
	if want := `server unreachable; no cached JWT-SVID for audience "svc-new" of ` + wl.String(); err == nil || err.Error() != want || !errors.As(err, &none) {
		t.Fatalf("new audience offline: %v, want %q", err, want)
	}
	if st := a.m.Status(); st.JWTSVIDs != 1 || !st.JWTSVIDsServedUntil.Equal(exp.Add(-cache.JWTOfflineMargin)) {
		t.Fatalf("status: %d JWT-SVIDs served until %s, want 1 until %s", st.JWTSVIDs, st.JWTSVIDsServedUntil, exp.Add(-cache.JWTOfflineMargin))
	}

	// An agent restarted while the server is down serves it from disk.
	a.stop()
	b := startAgent(t, srv, dir, agentOpts{clock: clk})
	if got, err := mint(b, "svc-b", "svc-a"); err != nil || got != current {
		t.Fatalf("after a restart offline: %v (same token %v)", err, got == current)
	}

	// Within 30 s of exp it is no longer served, nor past exp.
	clk.Set(exp.Add(-cache.JWTOfflineMargin))
	if _, err := mint(b, "svc-a", "svc-b"); err == nil || !strings.Contains(err.Error(), "too soon to serve") {
		t.Fatalf("within 30 s of exp: %v", err)
	}
	if st := b.m.Status(); st.JWTSVIDs != 0 {
		t.Fatalf("status counts %d JWT-SVIDs it no longer serves", st.JWTSVIDs)
	}
	clk.Set(exp)
	if _, err := mint(b, "svc-a", "svc-b"); err == nil || !strings.Contains(err.Error(), "expired at") {
		t.Fatalf("at exp: %v", err)
	}

	// The server is back: a new token is minted.
	// (The agent's reconnect backoff runs on the fake clock: move it on.)
	srv.start()
	eventually(t, "connected status", func() bool {
		clk.Add(100 * time.Millisecond)
		return b.m.Status().Connected
	})
	if got, err := mint(b, "svc-a", "svc-b"); err != nil || got == current {
		t.Fatalf("server back: %v (same token %v)", err, got == current)
	}
}
