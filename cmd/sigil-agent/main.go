// Command sigil-agent runs on every node or device: it attests to the
// server, keeps its workloads' identities and serves the SPIFFE Workload
// API. It also holds the workload-side CLI (api fetch|watch|validate,
// healthcheck) and validate and version.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	agentapp "github.com/sigil-spiffe/sigil/internal/app/agent"
	"github.com/sigil-spiffe/sigil/internal/cli/agentcli"
	"github.com/sigil-spiffe/sigil/internal/cli/cliutil"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/version"
)

func main() {
	// Stray log lines (gRPC's own errors) look like the daemon's; run
	// replaces this with the configured logger.
	if log, err := config.NewLogger("WARN", "text", os.Stderr); err == nil {
		config.SetDefault(log)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		return agentcli.Run(ctx, args, stdout, stderr)
	}
	switch {
	case cliutil.IsVersion(args[0]):
		return cliutil.Version("sigil-agent", version.String(), args[1:], stdout, stderr)
	case args[0] == "run":
		cfg, code, ok := cliutil.LoadConfig("sigil-agent run", synopsis("run"), args[1:], stdout, stderr, agentapp.Load)
		if !ok {
			return code
		}
		return cliutil.RunDaemon(ctx, "Agent", cfg, stderr,
			func(ctx context.Context, cfg *config.Agent, log *slog.Logger) (*agentapp.Agent, error) {
				config.SetDefault(log) // what logs without a logger of its own, too
				return agentapp.New(ctx, cfg, log, agentapp.Options{})
			})
	case args[0] == "validate":
		cfg, code, ok := cliutil.LoadConfig("sigil-agent validate", synopsis("validate"), args[1:], stdout, stderr, agentapp.Load)
		if !ok {
			return code
		}
		// The checks run makes before it creates or binds anything, with
		// the same errors.
		if err := agentapp.Preflight(ctx, cfg); err != nil {
			fmt.Fprintln(stderr, err)
			return cliutil.ExitError
		}
		fmt.Fprintf(stdout, "Sigil agent configuration file %s is valid.\n", cfg.Path)
		return cliutil.ExitOK
	}
	return agentcli.Run(ctx, args, stdout, stderr)
}

// synopsis is the usage line of one of agentcli.LeadCommands.
func synopsis(name string) string {
	for _, c := range agentcli.LeadCommands {
		if c.Name == name {
			return c.Synopsis
		}
	}
	return ""
}
