// Command sigil-server is the trust-domain authority and its admin CLI.
//
//	sigil-server run -config conf/server/server.conf
//	sigil-server validate -config conf/server/server.conf
//	sigil-server dev
//	sigil-server version
//	sigil-server entry create -spiffeID ... (and the other SPIRE-style commands)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/sigil-spiffe/sigil/internal/app/dev"
	serverapp "github.com/sigil-spiffe/sigil/internal/app/server"
	"github.com/sigil-spiffe/sigil/internal/cli/cliutil"
	"github.com/sigil-spiffe/sigil/internal/cli/servercli"
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
		return servercli.Run(ctx, args, stdout, stderr)
	}
	switch {
	case cliutil.IsVersion(args[0]):
		return cliutil.Version("sigil-server", version.String(), args[1:], stdout, stderr)
	case args[0] == "run":
		cfg, code, ok := cliutil.LoadConfig("sigil-server run", synopsis("run"), args[1:], stdout, stderr, serverapp.Load)
		if !ok {
			return code
		}
		return cliutil.RunDaemon(ctx, "Server", cfg, stderr,
			func(ctx context.Context, cfg *config.Server, log *slog.Logger) (*serverapp.Server, error) {
				config.SetDefault(log) // what logs without a logger of its own, too
				return serverapp.New(ctx, cfg, log, serverapp.Options{})
			})
	case args[0] == "validate":
		cfg, code, ok := cliutil.LoadConfig("sigil-server validate", synopsis("validate"), args[1:], stdout, stderr, serverapp.Load)
		if !ok {
			return code
		}
		// The checks run makes before it creates or binds anything, with
		// the same errors; warnings go to stderr.
		log, err := config.NewLogger(cfg.LogLevel, cfg.LogFormat, stderr)
		if err == nil {
			err = serverapp.Preflight(cfg, log)
		}
		if err != nil {
			fmt.Fprintln(stderr, err)
			return cliutil.ExitError
		}
		fmt.Fprintf(stdout, "Sigil server configuration file %s is valid.\n", cfg.Path)
		return cliutil.ExitOK
	case args[0] == "dev":
		if err := dev.Run(ctx, args[1:], stdout, stderr); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return cliutil.ExitOK
			}
			fmt.Fprintln(stderr, "sigil-server dev:", err)
			return cliutil.ExitError
		}
		return cliutil.ExitOK
	}
	return servercli.Run(ctx, args, stdout, stderr)
}

// synopsis is the usage line of one of servercli.LeadCommands.
func synopsis(name string) string {
	for _, c := range servercli.LeadCommands {
		if c.Name == name {
			return c.Synopsis
		}
	}
	return ""
}
