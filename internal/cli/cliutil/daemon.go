package cliutil

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
)

// DaemonConfig is a loaded configuration that knows where its logs go.
type DaemonConfig interface {
	OpenLogger(fallback io.Writer) (*slog.Logger, io.Closer, error)
}

// Daemon is what the run command starts: the server or the agent.
type Daemon interface {
	Run(ctx context.Context) error
}

// RunDaemon is the run command of both binaries, for the component named by
// who ("Server" or "Agent"). It loads the configuration from args with load
// (-h prints the usage and returns ExitOK), opens the configured logger
// (falling back to stderr), builds the daemon with start and runs it until
// ctx ends. It returns ExitError when any step fails.
func RunDaemon[C DaemonConfig, D Daemon](ctx context.Context, who string, args []string, stderr io.Writer,
	load func([]string) (C, error), start func(context.Context, C, *slog.Logger) (D, error)) int {
	cfg, err := load(args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(stderr, err)
		return ExitOK
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return ExitError
	}
	log, closer, err := cfg.OpenLogger(stderr)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return ExitError
	}
	defer closer.Close()
	d, err := start(ctx, cfg, log)
	if err != nil {
		log.Error(who+" failed to start", "error", err)
		return ExitError
	}
	if err := d.Run(ctx); err != nil {
		log.Error(who+" stopped with an error", "error", err)
		return ExitError
	}
	log.Info(who + " stopped")
	return ExitOK
}
