// Command sigil-server is the trust-domain authority and its admin CLI.
//
//	sigil-server run -config server.conf
//	sigil-server validate -config server.conf
//	sigil-server dev
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
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		return servercli.Run(ctx, args, stdout, stderr)
	}
	switch args[0] {
	case "run":
		return runServer(ctx, args[1:], stderr)
	case "validate":
		cfg, err := config.LoadServer(args[1:])
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stdout, err)
			return 0
		}
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		fmt.Fprintf(stdout, "Sigil server configuration file %s is valid.\n", cfg.Path)
		return 0
	case "dev":
		if err := dev.Run(ctx, args[1:], stdout, stderr); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			fmt.Fprintln(stderr, "sigil-server dev:", err)
			return 1
		}
		return 0
	}
	return servercli.Run(ctx, args, stdout, stderr)
}

func runServer(ctx context.Context, args []string, stderr io.Writer) int {
	return cliutil.RunDaemon(ctx, "Server", args, stderr, config.LoadServer,
		func(ctx context.Context, cfg *config.Server, log *slog.Logger) (*serverapp.Server, error) {
			return serverapp.New(ctx, cfg, log, serverapp.Options{})
		})
}
