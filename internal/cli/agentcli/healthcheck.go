package agentcli

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/cli/cliutil"
)

// healthcheckTimeout bounds a health check so that a hung agent reports
// unhealthy instead of blocking a probe forever.
const healthcheckTimeout = 5 * time.Second

type healthcheckCmd struct {
	h cliutil.HealthCheck
}

func (c *healthcheckCmd) flags(fs *flag.FlagSet) {
	c.h.Who = "Agent"
	c.h.Flags(fs)
}

// run asks the gRPC health service on the Workload API socket. An agent
// whose socket serves the Workload API but not the health service is
// probed with a Workload API call instead: any answer other than
// Unavailable means the agent is up (PermissionDenied only says that the
// caller has no identity).
func (c *healthcheckCmd) run(ctx context.Context, s *session) error {
	return c.h.Report(s.stdout, s.stderr, "Contacting Workload API...", func() error { return c.check(ctx, s) }, s.describe)
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

	if err := c.h.Serving(ctx, conn, s.stdout); status.Code(err) != codes.Unimplemented {
		return err
	}
	if c.h.Verbose {
		s.printf("Health service not offered; probing the Workload API\n")
	}
	ctx = metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	stream, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchJWTBundles(ctx, &workload.JWTBundlesRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	switch status.Code(err) {
	case codes.OK, codes.PermissionDenied:
		if c.h.Verbose {
			s.printf("Workload API answered (%s)\n", status.Code(err))
		}
		return nil
	default:
		return fmt.Errorf("probing the Workload API: %w", err)
	}
}
