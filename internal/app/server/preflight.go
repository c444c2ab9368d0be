package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"

	"github.com/sigil-spiffe/sigil/internal/ca"
	servercatalog "github.com/sigil-spiffe/sigil/internal/catalog/server"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/config"
)

// checked is what preflight loaded and New goes on with.
type checked struct {
	plugins *servercatalog.Plugins
	// upstream is the UpstreamAuthority, nil for a self-signed CA. When it
	// holds resources (UpstreamAuthority "spire") it is an io.Closer.
	upstream ca.UpstreamAuthority
	tcpAddr  *net.TCPAddr
	// bundleEndpoint is the federation bundle endpoint's address (nil
	// without one).
	bundleEndpoint *net.TCPAddr
}

func (c *checked) close() {
	if cl, ok := c.upstream.(io.Closer); ok {
		_ = cl.Close()
	}
}

// Load handles `sigil-server run` and `validate` arguments: the flags and
// the file (config.LoadServer), then the plugins against the catalog,
// each plugin's plugin_data included. Every error names its file:line.
func Load(args []string) (*config.Server, error) {
	cfg, err := config.LoadServer(args)
	if err != nil {
		return nil, err
	}
	if _, err := servercatalog.Parse(cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

// Preflight runs every check New makes before it creates a file or binds a
// socket: the plugins are built in and their plugin_data is valid, the
// upstream authority's files load, the CA settings are usable (its warnings
// are logged to log) and the bind address resolves. `sigil-server validate`
// runs it, so a configuration validate accepts is one run starts with, and
// both report a problem with the same error.
func Preflight(cfg *config.Server, log *slog.Logger) error {
	c, err := preflight(context.Background(), cfg, log, nil, true)
	if err != nil {
		return err
	}
	c.close()
	return nil
}

// preflight is Preflight, keeping what it loaded. warn logs the CA's
// warnings (run leaves them to the CA's Init, which logs them).
func preflight(ctx context.Context, cfg *config.Server, log *slog.Logger, clk clock.Clock, warn bool) (*checked, error) {
	plugins, err := servercatalog.Parse(cfg)
	if err != nil {
		return nil, err
	}
	warnings, err := caConfig(cfg).Check()
	if err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	if warn {
		for _, w := range warnings {
			log.Warn(w.Msg, w.Attrs...)
		}
	}
	tcpAddr, err := net.ResolveTCPAddr("tcp", net.JoinHostPort(cfg.BindAddress, strconv.Itoa(cfg.BindPort)))
	if err != nil {
		return nil, fmt.Errorf("bind address: %w", err)
	}
	beAddr, err := checkFederation(cfg, log, warn)
	if err != nil {
		return nil, err
	}
	c := &checked{plugins: plugins, tcpAddr: tcpAddr, bundleEndpoint: beAddr}
	if u, ok := plugins.UpstreamAuthority(); ok {
		// UpstreamAuthority "spire" is lazy: no I/O until the CA needs the
		// upstream, so a nested server whose CA is still valid starts while
		// cut off from it.
		up, err := u.Build(ctx, servercatalog.UpstreamAuthorityDeps{
			TrustDomain: cfg.TrustDomain,
			Log:         log.With("subsystem", "upstream_authority"),
			Clock:       clk,
		})
		if err != nil {
			return nil, err
		}
		c.upstream = up
	}
	return c, nil
}

// caConfig is the CA's configuration without its run-time dependencies.
func caConfig(cfg *config.Server) ca.Config {
	return ca.Config{
		TrustDomain: cfg.TrustDomain,
		KeyType:     cfg.CAKeyType,
		JWTKeyType:  cfg.JWTKeyType,
		CATTL:       cfg.CATTL,
		X509SVIDTTL: cfg.DefaultX509SVIDTTL,
		JWTSVIDTTL:  cfg.DefaultJWTSVIDTTL,
		Subject:     cfg.CASubject,
		JWTIssuer:   cfg.JWTIssuer,
	}
}
