package agent

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/telemetry/telemetrytest"
	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// TestSDSOnTheAgentSocket: the agent socket serves Envoy SDS next to the
// Workload API (health says so for each), unless disable_sds_api; its
// calls are counted in sigil_agent_rpcs_total; equal bundle names are
// logged as SPIRE warns about them.
func TestSDSOnTheAgentSocket(t *testing.T) {
	const sdsService = "envoy.service.secret.v3.SecretDiscoveryService"
	for _, disable := range []bool{false, true} {
		dir := testutil.ShortTempDir(t)
		cfg := config.DefaultAgent()
		cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")
		cfg.DataDir = dir
		cfg.SocketPath = filepath.Join(dir, "api.sock")
		cfg.ServerAddress = "127.0.0.1"
		cfg.ServerPort = 1 // nothing listens: the agent keeps retrying in the background
		cfg.InsecureBootstrap = true
		cfg.JoinToken = "token"
		cfg.DisableSDSAPI = disable
		cfg.SDS.DefaultAllBundlesName = cfg.SDS.DefaultBundleName
		cfg.Plugins = []config.Plugin{
			config.NewPlugin("NodeAttestor", "join_token", nil),
			config.NewPlugin("KeyManager", "memory", nil),
			config.NewPlugin("WorkloadAttestor", "unix", nil),
		}
		var logs syncBuffer
		a, err := New(context.Background(), cfg, slog.New(slog.NewTextHandler(&logs, nil)), Options{})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		select {
		case <-a.Ready():
		case err := <-done:
			t.Fatalf("agent stopped: %v", err)
		case <-time.After(time.Minute):
			t.Fatal("agent socket not ready after a minute")
		}
		conn, err := grpc.NewClient("unix://"+cfg.SocketPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		hctx, hcancel := context.WithTimeout(context.Background(), 30*time.Second)
		r, err := healthpb.NewHealthClient(conn).Check(hctx, &healthpb.HealthCheckRequest{Service: sdsService})
		hcancel()
		conn.Close()
		switch {
		case disable && status.Code(err) != codes.NotFound:
			t.Errorf("disable_sds_api: health of SDS %v, %v; want NotFound", r, err)
		case !disable && (err != nil || r.Status != healthpb.HealthCheckResponse_SERVING):
			t.Errorf("health of SDS %v, %v; want SERVING", r, err)
		}
		// An SDS call (Unavailable: this agent never attested) is counted.
		_, err = testutil.DialSDS(t, "unix://"+cfg.SocketPath).FetchSecrets(context.Background(), testutil.SDSRequest(testutil.EnvoyNode(1, 34), "ROOTCA"))
		samples, serr := telemetrytest.ScrapeHandler(a.Metrics().Handler())
		if serr != nil {
			t.Fatal(serr)
		}
		labels := []string{"service", sdsService, "method", "FetchSecrets", "code", status.Code(err).String()}
		switch n := samples.Get("sigil_agent_rpcs_total", labels...); {
		case disable && status.Code(err) != codes.Unimplemented:
			t.Errorf("disable_sds_api: FetchSecrets %v, want Unimplemented", err)
		case !disable && (status.Code(err) != codes.Unavailable || n != 1):
			t.Errorf("FetchSecrets %v, counted %v times %v", err, n, samples.Series("sigil_agent_rpcs_total"))
		}
		if warned := strings.Contains(logs.String(), "default_bundle_name and default_all_bundles_name are both"); warned == disable {
			t.Errorf("disable_sds_api=%v: the equal names warning logged: %v", disable, warned)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("run: %v", err)
		}
	}
}
