package cliutil

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// HealthCheck is the healthcheck command of both binaries, for the
// component named by Who ("Agent" or "Server").
type HealthCheck struct {
	Who     string
	Shallow bool
	Verbose bool
}

// Flags registers -shallow and -verbose.
func (h *HealthCheck) Flags(fs *flag.FlagSet) {
	fs.BoolVar(&h.Shallow, "shallow", false, "Perform a less stringent health check: only that the "+strings.ToLower(h.Who)+" answers")
	fs.BoolVar(&h.Verbose, "verbose", false, "Print verbose information")
}

// Report prints start (with -verbose), runs check and prints the verdict:
// "<Who> is healthy." on stdout, or, with -verbose, the failure rendered by
// describe on stderr, returning "<who> is unhealthy: ...".
func (h *HealthCheck) Report(stdout, stderr io.Writer, start string, check func() error, describe func(error) string) error {
	if h.Verbose {
		fmt.Fprintf(stdout, "%s\n", start)
	}
	if err := check(); err != nil {
		if h.Verbose {
			fmt.Fprintf(stderr, "Failed to check health: %s\n", describe(err))
		}
		return fmt.Errorf("%s is unhealthy: unable to determine health", strings.ToLower(h.Who))
	}
	fmt.Fprintf(stdout, "%s is healthy.\n", h.Who)
	return nil
}

// Serving asks the gRPC health service on conn for the overall status,
// prints it with -verbose, and fails unless it is SERVING (any answer will
// do with -shallow). An RPC failure is returned wrapped, its gRPC code
// intact.
func (h *HealthCheck) Serving(ctx context.Context, conn grpc.ClientConnInterface, stdout io.Writer) error {
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return fmt.Errorf("health check RPC: %w", err)
	}
	if h.Verbose {
		fmt.Fprintf(stdout, "%s status: %s\n", h.Who, resp.GetStatus())
	}
	if !h.Shallow && resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("%s reports %s", strings.ToLower(h.Who), resp.GetStatus())
	}
	return nil
}
