package agentcli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// healthcheckTimeout bounds a health check so that a hung agent reports
// unhealthy instead of blocking a probe forever.
const healthcheckTimeout = 5 * time.Second

type healthcheckCmd struct {
	shallow bool
	verbose bool
}

func (c *healthcheckCmd) flags(fs *flag.FlagSet) {
	fs.BoolVar(&c.shallow, "shallow", false, "Perform a less stringent health check: only that the agent answers")
	fs.BoolVar(&c.verbose, "verbose", false, "Print verbose information")
}

// run asks the gRPC health service on the Workload API socket. An agent
// whose socket serves the Workload API but not the health service is
// probed with a Workload API call instead: any answer other than
// Unavailable means the agent is up (PermissionDenied only says that the
// caller has no identity).
func (c *healthcheckCmd) run(ctx context.Context, s *session) error {
	if c.verbose {
		s.printf("Contacting Workload API...\n")
	}
	if err := c.check(ctx, s); err != nil {
		if c.verbose {
			s.errorf("Failed to check health: %s\n", s.describe(err))
		}
		return errors.New("agent is unhealthy: unable to determine health")
	}
	s.printf("Agent is healthy.\n")
	return nil
}

func (c *healthcheckCmd) check(ctx context.Context, s *session) error {
	if err := s.checkSocket(); err != nil {
		return err
	}
	conn, err := grpc.NewClient("unix:"+s.socketPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connecting to %q: %w", s.socketPath, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, healthcheckTimeout)
	defer cancel()

	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	switch status.Code(err) {
	case codes.OK:
		if c.verbose {
			s.printf("Agent status: %s\n", resp.GetStatus())
		}
		if !c.shallow && resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("agent reports %s", resp.GetStatus())
		}
		return nil
	case codes.Unimplemented:
		if c.verbose {
			s.printf("Health service not offered; probing the Workload API\n")
		}
	default:
		return fmt.Errorf("health check RPC: %w", err)
	}

	ctx = metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	stream, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchJWTBundles(ctx, &workload.JWTBundlesRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	switch status.Code(err) {
	case codes.OK, codes.PermissionDenied:
		if c.verbose {
			s.printf("Workload API answered (%s)\n", status.Code(err))
		}
		return nil
	default:
		return fmt.Errorf("probing the Workload API: %w", err)
	}
}
