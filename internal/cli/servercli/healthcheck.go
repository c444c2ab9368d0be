package servercli

import (
	"context"
	"flag"
	"time"

	"github.com/sigil-spiffe/sigil/internal/cli/cliutil"
)

// healthcheckTimeout bounds a health check so that a hung server reports
// unhealthy instead of blocking a probe forever.
const healthcheckTimeout = 10 * time.Second

type healthcheckCmd struct {
	h cliutil.HealthCheck
}

func (c *healthcheckCmd) flags(fs *flag.FlagSet) {
	c.h.Who = "Server"
	c.h.Flags(fs)
}

func (c *healthcheckCmd) run(ctx context.Context, s *session) error {
	return c.h.Report(s.stdout, s.stderr, "Checking server health...", func() error { return c.check(ctx, s) }, s.describe)
}

func (c *healthcheckCmd) check(ctx context.Context, s *session) error {
	conn, err := s.dial()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, healthcheckTimeout)
	defer cancel()
	return c.h.Serving(ctx, conn, s.stdout)
}
