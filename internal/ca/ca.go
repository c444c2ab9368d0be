// Package ca is the server's certificate authority: it keeps an X.509 CA key
// and a JWT signing key, each with an active and a prepared slot, rotates
// them on the configured clock, publishes their trust anchors in the trust
// domain's bundle, and signs X509-SVIDs, JWT-SVIDs and downstream CAs.
package ca

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/keys"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultCATTL       = 24 * time.Hour
	DefaultX509SVIDTTL = time.Hour
	DefaultJWTSVIDTTL  = 5 * time.Minute
	// DefaultJournalName is the CAJournalStore record the manager uses.
	DefaultJournalName = "ca"
)

// backdate is how far NotBefore of issued certificates is moved into the
// past to tolerate clock skew between issuer and verifiers.
const backdate = 10 * time.Second

// BundleStore is the part of datastore.BundleStore the CA uses.
type BundleStore interface {
	GetBundle(ctx context.Context, trustDomain string) (*datastore.Bundle, error)
	AppendBundle(ctx context.Context, b *datastore.Bundle) (*datastore.Bundle, error)
	PruneBundle(ctx context.Context, trustDomain string, before time.Time) (bool, error)
}

// UpstreamAuthority mints the server's intermediate CA certificate when the
// CA is not self-signed.
type UpstreamAuthority interface {
	// MintX509CA signs an intermediate CA for csr's key. chain[0] is the new
	// CA cert, followed by any upstream intermediates; roots are the upstream
	// trust anchors to publish in the bundle.
	MintX509CA(ctx context.Context, csr []byte, preferredTTL time.Duration) (chain []*x509.Certificate, roots []*x509.Certificate, err error)
}

// Config configures a Manager. Zero fields take the documented defaults.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	KeyType     keys.Type     // X.509 CA key; default ec-p256
	JWTKeyType  keys.Type     // default ec-p256 (ES256); ec-p384 => ES384; rsa => RS256
	CATTL       time.Duration // default 24h
	X509SVIDTTL time.Duration // default 1h
	JWTSVIDTTL  time.Duration // default 5m
	Subject     pkix.Name     // CA subject; default C=US, O=SPIFFE
	JWTIssuer   string        // optional "iss" claim of JWT-SVIDs
	Keys        keys.Manager
	Journal     datastore.CAJournalStore
	Bundles     BundleStore
	Upstream    UpstreamAuthority // nil => self-signed root
	Clock       clock.Clock       // nil => real clock
	Log         *slog.Logger      // nil => slog.Default()
	// OnBundleChange is called (from Init or the Run goroutine, with no CA
	// lock held) after the CA changed the stored bundle of its trust domain.
	OnBundleChange func()
	// JournalName is the CAJournalStore record name (default "ca"). Servers
	// sharing one database must use distinct names.
	JournalName string
}

// Manager is the server CA. Create with New, then Init, then Run.
type Manager struct {
	cfg    Config
	clk    clock.Clock
	log    *slog.Logger
	tdID   spiffeid.ID
	jwtAlg jose.SignatureAlgorithm

	// rotateMu serializes Init and rotation passes (key generation, store
	// I/O); signing never takes it.
	rotateMu    sync.Mutex
	initialized bool
	dirty       bool // journal must be saved

	mu    sync.RWMutex // guards the slots below
	x509s slots[*x509CA]
	jwts  slots[*jwtKey]
}

// New validates cfg and applies defaults. It does no I/O.
func New(cfg Config) (*Manager, error) {
	if cfg.Keys == nil || cfg.Journal == nil || cfg.Bundles == nil {
		if cfg.TrustDomain.IsZero() {
			return nil, errors.New("ca: trust domain is required")
		}
		return nil, errors.New("ca: Keys, Journal and Bundles are required")
	}
	cfg, alg, err := cfg.settled()
	if err != nil {
		return nil, err
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	return &Manager{
		cfg:    cfg,
		clk:    clock.OrReal(cfg.Clock),
		log:    log.With("trust_domain", cfg.TrustDomain.Name()),
		tdID:   cfg.TrustDomain.ID(),
		jwtAlg: alg,
	}, nil
}

// Warning is something about a configuration that works but is probably
// not what was meant: Msg and slog attributes.
type Warning struct {
	Msg   string
	Attrs []any
}

// Check validates cfg's settings as New does, without needing its
// dependencies (Keys, Journal, Bundles), and returns the warnings Init
// logs about them. A server's pre-start checks (run and validate) use it.
func (cfg Config) Check() ([]Warning, error) {
	c, _, err := cfg.settled()
	if err != nil {
		return nil, err
	}
	return c.warnings(), nil
}

// settled validates the settings and applies the defaults.
func (cfg Config) settled() (Config, jose.SignatureAlgorithm, error) {
	if cfg.TrustDomain.IsZero() {
		return cfg, "", errors.New("ca: trust domain is required")
	}
	var err error
	if cfg.KeyType, err = keys.ParseType(string(cfg.KeyType)); err != nil {
		return cfg, "", fmt.Errorf("ca: key type: %w", err)
	}
	if cfg.JWTKeyType, err = keys.ParseType(string(cfg.JWTKeyType)); err != nil {
		return cfg, "", fmt.Errorf("ca: JWT key type: %w", err)
	}
	alg, err := jwtAlgorithm(cfg.JWTKeyType)
	if err != nil {
		return cfg, "", fmt.Errorf("ca: %w", err)
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{{"ca_ttl", &cfg.CATTL, DefaultCATTL}, {"x509_svid_ttl", &cfg.X509SVIDTTL, DefaultX509SVIDTTL}, {"jwt_svid_ttl", &cfg.JWTSVIDTTL, DefaultJWTSVIDTTL}} {
		if *d.v < 0 {
			return cfg, "", fmt.Errorf("ca: negative %s %s", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if cfg.CATTL < time.Minute {
		return cfg, "", fmt.Errorf("ca: ca_ttl %s is too short (minimum 1m)", cfg.CATTL)
	}
	if isZeroName(cfg.Subject) {
		cfg.Subject = pkix.Name{Country: []string{"US"}, Organization: []string{"SPIFFE"}}
	}
	if cfg.JournalName == "" {
		cfg.JournalName = DefaultJournalName
	}
	return cfg, alg, nil
}

// warnings are the lifetime combinations that work badly; cfg is settled.
func (cfg Config) warnings() []Warning {
	var ws []Warning
	if cfg.CATTL < 6*cfg.X509SVIDTTL {
		ws = append(ws, Warning{"ca_ttl is less than 6 times the X509-SVID TTL: a CA is activated with about 1/6 of its lifetime left, so X509-SVIDs signed near the end of each CA's life are cut short to the CA's expiry and renewed more often",
			[]any{"ca_ttl", cfg.CATTL, "x509_svid_ttl", cfg.X509SVIDTTL}})
	}
	if cfg.CATTL < 6*cfg.JWTSVIDTTL {
		ws = append(ws, Warning{"ca_ttl is less than 6 times the JWT-SVID TTL: JWT-SVIDs signed near the end of a JWT key's life are cut short to the key's expiry",
			[]any{"ca_ttl", cfg.CATTL, "jwt_svid_ttl", cfg.JWTSVIDTTL}})
	}
	return ws
}

func isZeroName(n pkix.Name) bool {
	return len(n.Country) == 0 && len(n.Organization) == 0 && len(n.OrganizationalUnit) == 0 &&
		len(n.Locality) == 0 && len(n.Province) == 0 && len(n.StreetAddress) == 0 &&
		len(n.PostalCode) == 0 && n.SerialNumber == "" && n.CommonName == "" &&
		len(n.Names) == 0 && len(n.ExtraNames) == 0
}

// TrustDomain returns the CA's trust domain.
func (m *Manager) TrustDomain() spiffeid.TrustDomain { return m.cfg.TrustDomain }

// X509SVIDTTL returns the default X509-SVID lifetime.
func (m *Manager) X509SVIDTTL() time.Duration { return m.cfg.X509SVIDTTL }

// JWTSVIDTTL returns the default JWT-SVID lifetime.
func (m *Manager) JWTSVIDTTL() time.Duration { return m.cfg.JWTSVIDTTL }

// Init loads the CA state from the journal and key manager (so a restart
// keeps the same CA and JWT keys), creates whatever is missing or expired,
// and publishes every live authority in the trust domain's bundle.
func (m *Manager) Init(ctx context.Context) error {
	changed, err := m.init(ctx)
	if changed {
		m.bundleChanged()
	}
	return err
}

func (m *Manager) bundleChanged() {
	if m.cfg.OnBundleChange != nil {
		m.cfg.OnBundleChange()
	}
}

func (m *Manager) init(ctx context.Context) (bool, error) {
	m.rotateMu.Lock()
	defer m.rotateMu.Unlock()
	for _, w := range m.cfg.warnings() {
		m.log.Warn(w.Msg, w.Attrs...)
	}
	if err := m.load(ctx); err != nil {
		return false, err
	}
	changed, err := m.rotate(ctx)
	if err != nil {
		if !m.usable(m.clk.Now()) {
			return changed, fmt.Errorf("ca: init: %w", err)
		}
		// A rotation step failed (typically an unreachable upstream while
		// preparing the next CA) but the active authorities still sign:
		// start, and let Run retry.
		m.log.Warn("CA rotation pass failed at startup; signing with the current authorities and retrying", "error", err)
	}
	m.initialized = true
	return changed, nil
}

// Run rotates keys on the configured clock until ctx is done; it returns nil
// on cancellation. Failures of a rotation pass are logged and retried.
func (m *Manager) Run(ctx context.Context) error {
	m.rotateMu.Lock()
	ok := m.initialized
	m.rotateMu.Unlock()
	if !ok {
		return errors.New("ca: Run called before a successful Init")
	}
	if w, ok := m.cfg.Upstream.(UpstreamBundleWatcher); ok {
		ctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := w.WatchUpstreamBundle(ctx, m.ApplyUpstreamBundle); err != nil && ctx.Err() == nil {
				m.log.Error("upstream bundle watcher stopped", "error", err)
			}
		}()
		defer func() { cancel(); <-done }()
	}
	failed := false
	for {
		wait := m.nextWait(m.clk.Now())
		if failed {
			wait = max(wait, retryWait)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-m.clk.After(wait):
		}
		m.rotateMu.Lock()
		changed, err := m.rotate(ctx)
		m.rotateMu.Unlock()
		if changed {
			m.bundleChanged()
		}
		failed = err != nil
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			m.log.Error("CA rotation pass failed; will retry", "error", err, "retry_in", retryWait)
		}
	}
}

// X509Authorities returns the trust anchors the CA currently publishes:
// its self-signed roots, or the upstream roots.
func (m *Manager) X509Authorities() []*x509.Certificate {
	now := m.clk.Now()
	m.mu.RLock()
	defer m.mu.RUnlock()
	var out []*x509.Certificate
	seen := map[string]bool{}
	m.x509s.each(func(c *x509CA) {
		if !now.Before(c.notAfter) {
			return
		}
		for _, r := range c.roots {
			if !seen[string(r.Raw)] && now.Before(r.NotAfter) {
				seen[string(r.Raw)] = true
				out = append(out, r)
			}
		}
	})
	return out
}
