package servercli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// healthcheckTimeout bounds a health check so that a hung server reports
// unhealthy instead of blocking a probe forever.
const healthcheckTimeout = 10 * time.Second

type healthcheckCmd struct {
	shallow bool
	verbose bool
}

func (c *healthcheckCmd) flags(fs *flag.FlagSet) {
	fs.BoolVar(&c.shallow, "shallow", false, "Perform a less stringent health check: only that the server answers")
	fs.BoolVar(&c.verbose, "verbose", false, "Print verbose information")
}

func (c *healthcheckCmd) run(ctx context.Context, s *session) error {
	if c.verbose {
		s.printf("Checking server health...\n")
	}
	if err := c.check(ctx, s); err != nil {
		if c.verbose {
			s.errorf("Failed to check health: %s\n", s.describe(err))
		}
		return errors.New("server is unhealthy: unable to determine health")
	}
	s.printf("Server is healthy.\n")
	return nil
}

func (c *healthcheckCmd) check(ctx context.Context, s *session) error {
	conn, err := s.dial()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, healthcheckTimeout)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return fmt.Errorf("health check RPC: %w", err)
	}
	if c.verbose {
		s.printf("Server status: %s\n", resp.GetStatus())
	}
	if !c.shallow && resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("server reports %s", resp.GetStatus())
	}
	return nil
}
