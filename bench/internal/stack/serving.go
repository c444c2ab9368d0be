package stack

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// WaitServing polls srv's admin socket every poll until its health check
// says SERVING, or timeout. It reconnects every poll too: gRPC's default
// backoff (1 s growing to 2 min) would add its own wait to the time to
// ready that the benchmarks measure.
func WaitServing(srv *testutil.Server, timeout, poll time.Duration) error {
	conn, err := grpc.NewClient("unix://"+srv.Config.SocketPath, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: grpcbackoff.Config{BaseDelay: poll, Multiplier: 1, MaxDelay: poll}, MinConnectTimeout: time.Second}))
	if err != nil {
		return err
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	return testutil.Poll(timeout, poll, func() (bool, error) {
		if srv.Proc.Exited() {
			return false, fmt.Errorf("%s exited: %v", srv.Name(), srv.Proc.Err())
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING, nil
	})
}

// LoadAvg is the machine's 1, 5 and 15 minute load averages, for the
// figures' record.
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
