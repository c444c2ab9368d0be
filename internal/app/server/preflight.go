package server

import (
	"fmt"
	"log/slog"
	"net"
	"strconv"

	"github.com/sigil-spiffe/sigil/internal/ca"
	"github.com/sigil-spiffe/sigil/internal/ca/upstreamdisk"
	"github.com/sigil-spiffe/sigil/internal/ca/upstreamspire"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/datastore/sqlstore"
)

// checked is what preflight loaded and New goes on with.
type checked struct {
	// upstream is the UpstreamAuthority, nil for a self-signed CA; nested
	// is set too when it is "spire" (it must be closed).
	upstream ca.UpstreamAuthority
	nested   *upstreamspire.Authority
	tcpAddr  *net.TCPAddr
}

func (c *checked) close() {
	if c.nested != nil {
		_ = c.nested.Close()
	}
}

// Preflight runs every check New makes before it creates a file or binds a
// socket: the datastore settings are supported, the upstream authority's
// files load, the CA settings are usable (its warnings are logged to log)
// and the bind address resolves. `sigil-server validate` runs it, so a
// configuration validate accepts is one run starts with, and both report a
// problem with the same error.
func Preflight(cfg *config.Server, log *slog.Logger) error {
	c, err := preflight(cfg, log, true)
	if err != nil {
		return err
	}
	c.close()
	return nil
}

// preflight is Preflight, keeping what it loaded. warn logs the CA's
// warnings (run leaves them to the CA's Init, which logs them).
func preflight(cfg *config.Server, log *slog.Logger, warn bool) (*checked, error) {
	dsCfg := sqlstore.Config{DatabaseType: cfg.DataStore.DatabaseType, ConnectionString: cfg.DataStore.ConnectionString, Synchronous: cfg.DataStore.SQLiteSynchronous}
	if err := dsCfg.Check(); err != nil {
		return nil, fmt.Errorf("DataStore \"sql\": %w", err)
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
	c := &checked{tcpAddr: tcpAddr}
	if u := cfg.UpstreamDisk; u != nil {
		up, err := upstreamdisk.New(u.CertFilePath, u.KeyFilePath, u.BundleFilePath)
		if err != nil {
			return nil, fmt.Errorf("UpstreamAuthority \"disk\": %w", err)
		}
		c.upstream = up
	}
	if u := cfg.UpstreamSPIRE; u != nil {
		// Lazy: no I/O until the CA needs the upstream, so a nested server
		// whose CA is still valid starts while cut off from it.
		nested, err := upstreamspire.New(upstreamspire.Config{
			TrustDomain:       cfg.TrustDomain,
			ServerAddress:     u.ServerAddress,
			ServerPort:        u.ServerPort,
			WorkloadAPISocket: u.WorkloadAPISocket,
			Log:               log.With("subsystem", "upstream_authority"),
		})
		if err != nil {
			return nil, fmt.Errorf("UpstreamAuthority \"spire\": %w", err)
		}
		c.upstream, c.nested = nested, nested
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
