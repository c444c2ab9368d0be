// Package servingcert serves TLS with a certificate chain and key read from
// PEM files and read again periodically, so a certificate renewed on disk
// (by an ACME client, cert-manager, an operator) is picked up without a
// restart: SPIRE's serving_cert_file. A reload that fails keeps the
// previous certificate and is logged.
package servingcert

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clock"
)

// Cert is a certificate loaded from files; Run keeps it current.
type Cert struct {
	certPath, keyPath string
	interval          time.Duration
	clk               clock.Clock
	log               *slog.Logger

	mu   sync.RWMutex
	cert *tls.Certificate
}

// Load reads the certificate chain and key once (an error names the
// files); Run reads them again every interval.
func Load(certPath, keyPath string, interval time.Duration, clk clock.Clock, log *slog.Logger) (*Cert, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if interval <= 0 {
		return nil, fmt.Errorf("serving certificate: sync interval %s is not positive", interval)
	}
	c := &Cert{certPath: certPath, keyPath: keyPath, interval: interval, clk: clock.OrReal(clk), log: log}
	cert, err := c.load()
	if err != nil {
		return nil, err
	}
	c.cert = cert
	return c, nil
}

func (c *Cert) load() (*tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(c.certPath, c.keyPath)
	if err != nil {
		return nil, fmt.Errorf("serving certificate (%s, %s): %w", c.certPath, c.keyPath, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("serving certificate %s: %w", c.certPath, err)
		}
	}
	return &cert, nil
}

// Leaf is the certificate currently served.
func (c *Cert) Leaf() *x509.Certificate {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.cert.Leaf
}

// GetCertificate is tls.Config.GetCertificate.
func (c *Cert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.cert, nil
}

// TLSConfig is a server configuration serving c (TLS 1.2 at least).
func (c *Cert) TLSConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: c.GetCertificate}
}

// Run reads the files again every interval until ctx ends.
func (c *Cert) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.clk.After(c.interval):
		}
		cert, err := c.load()
		if err != nil {
			c.log.Warn("Failed to reload the serving certificate; keeping the previous one", "error", err)
			continue
		}
		c.mu.Lock()
		changed := !cert.Leaf.Equal(c.cert.Leaf)
		c.cert = cert
		c.mu.Unlock()
		if changed {
			c.log.Info("Reloaded the serving certificate", "cert_file_path", c.certPath, "not_after", cert.Leaf.NotAfter)
		}
	}
}
