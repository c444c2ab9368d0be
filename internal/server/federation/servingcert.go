package federation

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clock"
)

// ServingCert is the https_web profile's certificate: a PEM certificate
// chain and key read from files, read again every sync interval (SPIRE's
// serving_cert_file). A reload that fails keeps the previous certificate.
type ServingCert struct {
	certPath, keyPath string
	interval          time.Duration
	clk               clock.Clock
	log               *slog.Logger

	mu   sync.RWMutex
	cert *tls.Certificate
}

// LoadServingCert reads the certificate and key once; an error names the
// files. Run reloads them.
func LoadServingCert(certPath, keyPath string, interval time.Duration, clk clock.Clock, log *slog.Logger) (*ServingCert, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sc := &ServingCert{certPath: certPath, keyPath: keyPath, interval: interval, clk: clock.OrReal(clk), log: log}
	c, err := sc.load()
	if err != nil {
		return nil, err
	}
	sc.cert = c
	return sc, nil
}

// CheckServingCert reports whether the files load (sigil-server validate).
func CheckServingCert(certPath, keyPath string) error {
	_, err := (&ServingCert{certPath: certPath, keyPath: keyPath}).load()
	return err
}

func (sc *ServingCert) load() (*tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(sc.certPath, sc.keyPath)
	if err != nil {
		return nil, fmt.Errorf("bundle endpoint serving certificate (%s, %s): %w", sc.certPath, sc.keyPath, err)
	}
	if c.Leaf == nil {
		if c.Leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return nil, fmt.Errorf("bundle endpoint serving certificate %s: %w", sc.certPath, err)
		}
	}
	return &c, nil
}

// GetCertificate is tls.Config.GetCertificate.
func (sc *ServingCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	sc.mu.RLock()
	defer sc.mu.RUnlock()
	if sc.cert == nil {
		return nil, errors.New("no serving certificate")
	}
	return sc.cert, nil
}

// Run reloads the files every interval until ctx ends.
func (sc *ServingCert) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-sc.clk.After(sc.interval):
		}
		c, err := sc.load()
		if err != nil {
			sc.log.Warn("Could not reload the bundle endpoint's serving certificate; keeping the previous one", "error", err)
			continue
		}
		sc.mu.Lock()
		changed := sc.cert == nil || !c.Leaf.Equal(sc.cert.Leaf)
		sc.cert = c
		sc.mu.Unlock()
		if changed {
			sc.log.Info("Reloaded the bundle endpoint's serving certificate", "not_after", c.Leaf.NotAfter)
		}
	}
}
