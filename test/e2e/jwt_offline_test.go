package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/adminclient"
	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// jwtTTL is the entry's JWT-SVID TTL: short, so that the test sees the
// token expire, long enough that stopping the server and restarting the
// agent fit in its served window (until a quarter of it before exp).
const jwtTTL = 40 * time.Second

// TestJWTSVIDAcrossOfflineRestart: real processes. A workload fetches a
// JWT-SVID for audience A; the server is stopped and the agent restarted.
// The restarted agent serves the same token for A, refuses a never-fetched
// audience B with a precise Unavailable, says so in its degraded status
// and metrics, and stops serving the token before its exp: never after.
func TestJWTSVIDAcrossOfflineRestart(t *testing.T) {
	srv := testutil.StartServer(t, testutil.ServerConfig{})
	cfg := testutil.AgentFor(t, srv, "/agent/jwt-edge", "")
	port, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg.HealthPort = port
	agent := testutil.StartAgent(t, cfg)
	agentID := srv.ID("/agent/jwt-edge")
	id := srv.ID("/jwt-offline")
	e, err := adminclient.NewEntry(id, agentID, uidSelector)
	if err != nil {
		t.Fatal(err)
	}
	e.JwtSvidTtl = int32(jwtTTL / time.Second)
	srv.Admin(t).CreateEntries(t, e)
	testutil.RequireSVID(t, agent.SocketAddr(), id, deadline)

	fetch := func(aud string) (*jwtsvid.SVID, error) {
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		return workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud}, workloadapi.WithAddr(agent.SocketAddr()))
	}
	minted, err := fetch("svc-a")
	if err != nil {
		t.Fatalf("JWT-SVID while connected: %v", err)
	}
	exp := minted.Expiry
	servedUntil := exp.Add(-jwtTTL / 4)
	path := filepath.Join(cfg.DataDir, cache.JWTFileName)
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("persisted JWT-SVIDs: %v (mode %v), want a 0600 file", err, fi)
	}

	srv.Stop(t)
	agent.Stop(t)
	agent.Start(t)

	// The same token for A, straight from data_dir.
	got, err := fetch("svc-a")
	if err != nil {
		t.Fatalf("JWT-SVID for A after an offline restart (%s before it stops being served): %v", time.Until(servedUntil).Round(time.Second), err)
	}
	if got.Marshal() != minted.Marshal() {
		t.Fatal("restarted agent served another token for A")
	}
	// B was never fetched: a precise refusal.
	_, err = fetch("svc-b")
	want := fmt.Sprintf(`server unreachable; no cached JWT-SVID for audience "svc-b" of %s`, id)
	if st, _ := status.FromError(err); st.Code() != codes.Unavailable || st.Message() != want {
		t.Fatalf("JWT-SVID for B offline: %v; want Unavailable %q", err, want)
	}
	// The degraded status says which JWT-SVIDs it still serves.
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	ready := testutil.WaitHTTP(t, base+"/ready", http.StatusOK, "degraded:", deadline)
	if !strings.Contains(ready, "serving 1 cached JWT-SVIDs for their audiences only, the first until "+servedUntil.UTC().Format(time.RFC3339)) {
		t.Errorf("degraded status: %s", ready)
	}
	if m := httpBody(t, base+"/metrics"); !strings.Contains(m, "\nsigil_agent_jwt_svids 1\n") {
		t.Errorf("metrics lack sigil_agent_jwt_svids 1:\n%s", grepLines(m, "jwt"))
	}

	// Served until shortly before exp, then refused, and never after exp.
	err = testutil.Poll(jwtTTL+deadline, 250*time.Millisecond, func() (bool, error) {
		got, err := fetch("svc-a")
		if err == nil {
			if got.Marshal() != minted.Marshal() {
				return false, fmt.Errorf("another token served for A")
			}
			if !time.Now().Before(exp) {
				return false, fmt.Errorf("token served at %s, past its exp %s", time.Now().UTC().Format(time.RFC3339), exp)
			}
			return false, nil
		}
		if st, _ := status.FromError(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), `audience "svc-a"`) {
			return false, fmt.Errorf("refusal for A: %v", err)
		}
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if now := time.Now(); now.Before(servedUntil.Add(-time.Second)) {
		t.Fatalf("refused at %s, before its served window ended (%s)", now.UTC().Format(time.RFC3339), servedUntil)
	}
	time.Sleep(time.Until(exp.Add(time.Second))) // to a known instant: past exp
	if _, err := fetch("svc-a"); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "expired at") {
		t.Fatalf("JWT-SVID for A past exp: %v, want Unavailable (expired)", err)
	}
	if ready := testutil.WaitHTTP(t, base+"/ready", http.StatusOK, "degraded:", deadline); !strings.Contains(ready, "no cached JWT-SVID") {
		t.Errorf("degraded status after exp: %s", ready)
	}
}

func httpBody(t *testing.T, url string) string {
	t.Helper()
	_, b := testutil.Get(t, nil, url)
	return string(b)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
