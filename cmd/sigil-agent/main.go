// Command sigil-agent runs on every node or device: it attests to the
// server, keeps its workloads' identities and serves the SPIFFE Workload
// API. It also holds the workload-side CLI (api fetch|watch|validate,
// healthcheck).
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
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "run" {
		return runAgent(ctx, args[1:], stderr)
	}
	if len(args) > 0 && args[0] == "validate" {
		cfg, err := config.LoadAgent(args[1:])
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		fmt.Fprintf(stdout, "Sigil agent configuration file %s is valid.\n", cfg.Path)
		return 0
	}
	return agentcli.Run(ctx, args, stdout, stderr)
}

func runAgent(ctx context.Context, args []string, stderr io.Writer) int {
	return cliutil.RunDaemon(ctx, "Agent", args, stderr, config.LoadAgent,
		func(ctx context.Context, cfg *config.Agent, log *slog.Logger) (*agentapp.Agent, error) {
			return agentapp.New(ctx, cfg, log, agentapp.Options{})
		})
}
