package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"

	agentcatalog "github.com/sigil-spiffe/sigil/internal/catalog/agent"
	"github.com/sigil-spiffe/sigil/internal/config"
)

// Load handles `sigil-agent run` and `validate` arguments: the flags and
// the file (config.LoadAgent), then the plugins against the catalog, each
// plugin's plugin_data included. Every error names its file:line.
func Load(args []string) (*config.Agent, error) {
	cfg, err := config.LoadAgent(args)
	if err != nil {
		return nil, err
	}
	if _, err := agentcatalog.Parse(cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

// Preflight runs every check New makes before it creates a file or binds a
// socket: the plugins are built in and their plugin_data is valid, and the
// bootstrap trust bundle (trust_bundle_path, or trust_bundle_url, fetched)
// loads. `sigil-agent validate` runs it, so a configuration validate
// accepts is one run starts with, and both report a problem with the same
// error.
func Preflight(ctx context.Context, cfg *config.Agent) error {
	_, err := preflight(ctx, cfg)
	return err
}

// checked is what preflight loaded and New goes on with.
type checked struct {
	plugins *agentcatalog.Plugins
	// bundle is the bootstrap trust bundle (nil with insecure_bootstrap).
	bundle []*x509.Certificate
}

// preflight is Preflight, keeping what it loaded.
func preflight(ctx context.Context, cfg *config.Agent) (*checked, error) {
	plugins, err := agentcatalog.Parse(cfg)
	if err != nil {
		return nil, err
	}
	bundle, err := trustBundle(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return &checked{plugins: plugins, bundle: bundle}, nil
}

// trustBundle reads the bootstrap bundle: trust_bundle_path (PEM or SPIFFE
// JSON, as trust_bundle_format says), trust_bundle_url (https), or none
// with insecure_bootstrap. Errors name the file or URL and, when the
// content is in the other format, say so.
func trustBundle(ctx context.Context, cfg *config.Agent) ([]*x509.Certificate, error) {
	var data []byte
	var src string
	switch {
	case cfg.TrustBundlePath != "":
		src = fmt.Sprintf("trust_bundle_path %q", cfg.TrustBundlePath)
		b, err := os.ReadFile(cfg.TrustBundlePath)
		if err != nil {
			return nil, fmt.Errorf("%s: cannot read the bootstrap trust bundle: %w", src, err)
		}
		data = b
	case cfg.TrustBundleURL != "":
		src = fmt.Sprintf("trust_bundle_url %q", cfg.TrustBundleURL)
		b, err := fetchBundle(ctx, cfg.TrustBundleURL)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", src, err)
		}
		data = b
	default:
		return nil, nil
	}
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return nil, fmt.Errorf("%s: the bootstrap trust bundle is empty (export the server's with 'sigil-server bundle show')", src)
	}
	looksPEM := bytes.HasPrefix(trimmed, []byte("-----BEGIN"))
	looksJSON := trimmed[0] == '{'
	if cfg.TrustBundleFormat == config.TrustBundleFormatSPIFFE {
		b, err := spiffebundle.Parse(cfg.TrustDomain, data)
		if err != nil {
			hint := ""
			if looksPEM {
				hint = ` (the content is PEM: set trust_bundle_format = "pem" or -trustBundleFormat pem)`
			}
			return nil, fmt.Errorf("%s: parse SPIFFE trust bundle: %w%s", src, err, hint)
		}
		if len(b.X509Authorities()) == 0 {
			return nil, fmt.Errorf("%s: the SPIFFE trust bundle has no X.509 authorities", src)
		}
		return b.X509Authorities(), nil
	}
	hint := ""
	if looksJSON {
		hint = ` (the content looks like a SPIFFE bundle (JSON): set trust_bundle_format = "spiffe" or -trustBundleFormat spiffe)`
	}
	b, err := x509bundle.Parse(cfg.TrustDomain, data)
	if err != nil {
		return nil, fmt.Errorf("%s: parse PEM trust bundle: %w%s", src, err, hint)
	}
	if b.Empty() {
		return nil, fmt.Errorf("%s: parse PEM trust bundle: no certificates%s", src, hint)
	}
	return b.X509Authorities(), nil
}

func fetchBundle(ctx context.Context, url string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 1<<20))
}
