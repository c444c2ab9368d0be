package cliutil

import (
	"context"
	"errors"
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

// flagUsage is implemented by the error a configuration loader returns for
// -h (config.HelpError): it carries the flags' usage.
type flagUsage interface {
	error
	FlagUsage() string
}

// LoadConfig loads the configuration of the command cmd (e.g. "sigil-server
// run", described by synopsis) from args with load. For -h it prints the
// command's usage on stdout and returns ok false with ExitOK; a load error
// is printed on stderr (ok false, ExitError).
func LoadConfig[C any](cmd, synopsis string, args []string, stdout, stderr io.Writer, load func([]string) (C, error)) (cfg C, code int, ok bool) {
	cfg, err := load(args)
	var help flagUsage
	if errors.As(err, &help) {
		fmt.Fprintf(stdout, "Usage of %s:\n  %s\n\nFlags:\n%s", cmd, synopsis, help.FlagUsage())
		return cfg, ExitOK, false
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return cfg, ExitError, false
	}
	return cfg, ExitOK, true
}

// RunDaemon is the run command of both binaries, for the component named by
// who ("Server" or "Agent") and its loaded configuration. It opens the
// configured logger (falling back to stderr), builds the daemon with start
// and runs it until ctx ends. It returns ExitError when any step fails.
func RunDaemon[C DaemonConfig, D Daemon](ctx context.Context, who string, cfg C, stderr io.Writer,
	start func(context.Context, C, *slog.Logger) (D, error)) int {
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
