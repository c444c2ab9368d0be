// Command sigil-oidc is Sigil's OIDC discovery provider: it serves
// /.well-known/openid-configuration and /keys from the trust domain's
// JWT-SVID signing keys, so that OIDC relying parties (cloud IAM, any OIDC
// library) verify JWT-SVIDs. It reads SPIRE oidc-discovery-provider's
// configuration file (-config, default oidc-discovery-provider.conf) and
// takes its keys from the agent's Workload API, the server API on the
// server's admin socket, or a SPIFFE bundle file.
package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	oidcapp "github.com/sigil-spiffe/sigil/internal/app/oidc"
	"github.com/sigil-spiffe/sigil/internal/cli/cliutil"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/version"
)

const synopsis = "sigil-oidc [-config <file>] [-expandEnv]: serves OIDC discovery for the trust domain's JWT-SVIDs"

func main() {
	if log, err := config.NewLogger("WARN", "text", os.Stderr); err == nil {
		config.SetDefault(log)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && cliutil.IsVersion(args[0]) {
		return cliutil.Version("sigil-oidc", version.String(), args[1:], stdout, stderr)
	}
	cfg, code, ok := cliutil.LoadConfig("sigil-oidc", synopsis, args, stdout, stderr, config.LoadOIDC)
	if !ok {
		return code
	}
	return cliutil.RunDaemon(ctx, "OIDC discovery provider", cfg, stderr,
		func(ctx context.Context, cfg *config.OIDC, log *slog.Logger) (*oidcapp.Provider, error) {
			config.SetDefault(log)
			return oidcapp.New(ctx, cfg, log, oidcapp.Options{})
		})
}
