package federation

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
)

// Refresh schedule defaults. A relationship is refreshed at its peer's
// refresh hint, bounded to [MinRefreshInterval, MaxRefreshInterval]
// (DefaultRefreshInterval when the peer sends none, SPIRE's 5 minutes), a
// random 0-25% earlier so that the servers of one trust domain spread their
// requests; a failed fetch is retried after BackoffBase, doubling per
// consecutive failure up to the refresh interval, so a peer cut off for
// days is still tried at least once per interval.
const (
	MinRefreshInterval     = 5 * time.Second
	MaxRefreshInterval     = time.Hour
	DefaultRefreshInterval = 5 * time.Minute
	BackoffBase            = 2 * time.Second
	// ReloadInterval is how often the relationships are read again from
	// the datastore (other servers sharing it may change them); a change
	// through this server's API reloads at once.
	ReloadInterval = 10 * time.Second
	// FetchTimeout bounds one fetch, connection and body included.
	FetchTimeout = 30 * time.Second
)

// maxErrorLen bounds an error kept in a status (it may quote what a peer
// sent).
const maxErrorLen = 512

// Relationship is a federation relationship the manager refreshes.
type Relationship struct {
	TrustDomain       spiffeid.TrustDomain
	BundleEndpointURL string
	Profile           string // datastore.ProfileHTTPSSPIFFE or ProfileHTTPSWeb
	// EndpointSPIFFEID is what an https_spiffe endpoint must present.
	EndpointSPIFFEID spiffeid.ID
	// FromConfig is set for the server configuration's relationships
	// (federates_with), which take precedence over stored ones.
	FromConfig bool
}

// Store is the part of the datastore the manager uses.
type Store interface {
	ListFederationRelationships(ctx context.Context, p datastore.Page) ([]*datastore.FederationRelationship, string, error)
	GetBundle(ctx context.Context, trustDomain string) (*datastore.Bundle, error)
	SetBundle(ctx context.Context, b *datastore.Bundle) (*datastore.Bundle, error)
	SetBundleRefreshed(ctx context.Context, trustDomain string, t time.Time) error
	BundleRefreshes(ctx context.Context) (map[string]time.Time, error)
}

// Metrics records refreshes (internal/telemetry's Server).
type Metrics interface {
	// FederationRefreshed records a fetch of td's bundle at at; err is its
	// failure, nil on success.
	FederationRefreshed(td string, at time.Time, err error)
	// FederationLastRefresh reports td's last successful fetch known when
	// its refresher starts (kept across restarts), counting nothing.
	FederationLastRefresh(td string, at time.Time)
	// FederationRemoved drops td's series: no longer federated.
	FederationRemoved(td string)
}

// Intervals tune the schedule (zero fields: the package defaults).
type Intervals struct {
	Min, Max, Default, BackoffBase, Reload, FetchTimeout time.Duration
}

func (iv Intervals) withDefaults() Intervals {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&iv.Min, MinRefreshInterval)
	def(&iv.Max, MaxRefreshInterval)
	def(&iv.Default, DefaultRefreshInterval)
	def(&iv.BackoffBase, BackoffBase)
	def(&iv.Reload, ReloadInterval)
	def(&iv.FetchTimeout, FetchTimeout)
	return iv
}

// ManagerConfig configures the manager.
type ManagerConfig struct {
	// TrustDomain is the server's own (never refreshed).
	TrustDomain spiffeid.TrustDomain
	Store       Store
	// Static are the configuration's relationships.
	Static []Relationship
	// OnBundleChange is called after a federated bundle was written (the
	// entry cache wakes the agents).
	OnBundleChange func()
	// WebPKIRoots authenticate https_web endpoints; nil is the system's
	// roots (SSL_CERT_FILE / SSL_CERT_DIR apply).
	WebPKIRoots *x509.CertPool
	Intervals   Intervals
	// Metrics may be nil.
	Metrics Metrics
	Clock   clock.Clock
	Log     *slog.Logger
}

// Manager runs one refresher per relationship.
type Manager struct {
	cfg ManagerConfig
	iv  Intervals
	clk clock.Clock
	log *slog.Logger

	reloadCh chan struct{}
	// reconcileMu serializes reconciliations (Run and RefreshBundleFor).
	reconcileMu sync.Mutex

	mu         sync.Mutex
	refreshers map[spiffeid.TrustDomain]*refresher
	runCtx     context.Context // set by Run; refreshers run under it
}

// NewManager checks cfg and returns a manager; Run starts the refreshers.
func NewManager(cfg ManagerConfig) (*Manager, error) {
	if cfg.TrustDomain.IsZero() || cfg.Store == nil {
		return nil, errors.New("federation: trust domain and store are required")
	}
	for _, r := range cfg.Static {
		if err := checkRelationship(cfg.TrustDomain, r); err != nil {
			return nil, fmt.Errorf("federation: federates_with %q: %w", r.TrustDomain.Name(), err)
		}
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Manager{
		cfg:        cfg,
		iv:         cfg.Intervals.withDefaults(),
		clk:        clock.OrReal(cfg.Clock),
		log:        log,
		reloadCh:   make(chan struct{}, 1),
		refreshers: map[spiffeid.TrustDomain]*refresher{},
	}, nil
}

func checkRelationship(own spiffeid.TrustDomain, r Relationship) error {
	switch {
	case r.TrustDomain.IsZero():
		return errors.New("no trust domain")
	case r.TrustDomain == own:
		return errors.New("the server's own trust domain")
	case r.BundleEndpointURL == "":
		return errors.New("no bundle endpoint URL")
	}
	switch r.Profile {
	case datastore.ProfileHTTPSWeb:
	case datastore.ProfileHTTPSSPIFFE:
		if r.EndpointSPIFFEID.IsZero() {
			return errors.New("https_spiffe without an endpoint SPIFFE ID")
		}
	default:
		return fmt.Errorf("unknown profile %s", clip.Quote(r.Profile))
	}
	return nil
}

// Run reconciles the refreshers with the relationships now and every
// reload interval (or TriggerReload) until ctx ends, then stops them.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	m.runCtx = ctx
	m.mu.Unlock()
	defer m.stopAll()
	for {
		m.reconcile(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-m.reloadCh:
		case <-m.clk.After(m.iv.Reload):
		}
	}
}

// TriggerReload makes Run read the relationships again now.
func (m *Manager) TriggerReload() {
	select {
	case m.reloadCh <- struct{}{}:
	default:
	}
}

// RefreshBundleFor reads the relationships again and fetches td's bundle
// now. managed is false when the server has no relationship with td; err
// is the fetch's failure.
func (m *Manager) RefreshBundleFor(ctx context.Context, td spiffeid.TrustDomain) (managed bool, err error) {
	m.mu.Lock()
	runCtx := m.runCtx
	m.mu.Unlock()
	if runCtx == nil {
		return false, errors.New("federation: the refreshers are not running")
	}
	m.reconcile(runCtx)
	m.mu.Lock()
	r := m.refreshers[td]
	m.mu.Unlock()
	if r == nil {
		return false, nil
	}
	return true, r.refreshNow(ctx)
}

// BundlesChanged tells the refreshers that waited for a bootstrap bundle
// to look again now (a bundle was set through the API).
func (m *Manager) BundlesChanged() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range m.refreshers {
		r.mu.Lock()
		waiting := r.noBundle
		r.mu.Unlock()
		if waiting {
			select {
			case r.wake <- struct{}{}:
			default:
			}
		}
	}
}

// Statuses returns the status of every relationship, by trust domain.
func (m *Manager) Statuses() []Status {
	m.mu.Lock()
	rs := slices.Collect(maps.Values(m.refreshers))
	m.mu.Unlock()
	now := m.clk.Now()
	out := make([]Status, 0, len(rs))
	for _, r := range rs {
		out = append(out, r.statusAt(now))
	}
	slices.SortFunc(out, func(a, b Status) int { return compareNames(a.Relationship.TrustDomain, b.Relationship.TrustDomain) })
	return out
}

// Status returns td's status, if the server has a relationship with it.
func (m *Manager) Status(td spiffeid.TrustDomain) (Status, bool) {
	m.mu.Lock()
	r := m.refreshers[td]
	m.mu.Unlock()
	if r == nil {
		return Status{}, false
	}
	return r.statusAt(m.clk.Now()), true
}

func compareNames(a, b spiffeid.TrustDomain) int {
	switch {
	case a.Name() < b.Name():
		return -1
	case a.Name() > b.Name():
		return 1
	}
	return 0
}

// relationships reads the stored relationships and overlays the static
// ones. ok is false when the store could not be read (only the static
// ones are then known).
func (m *Manager) relationships(ctx context.Context) (map[spiffeid.TrustDomain]Relationship, bool) {
	out := map[spiffeid.TrustDomain]Relationship{}
	ok := true
	page := datastore.Page{Size: 500}
	for {
		frs, next, err := m.cfg.Store.ListFederationRelationships(ctx, page)
		if err != nil {
			if ctx.Err() == nil {
				m.log.Error("Could not read the federation relationships", "error", err)
			}
			ok = false
			break
		}
		for _, fr := range frs {
			r, err := fromStored(fr)
			if err == nil {
				err = checkRelationship(m.cfg.TrustDomain, r)
			}
			if err != nil {
				m.log.Warn("Ignoring a stored federation relationship", "trust_domain", clip.Quote(fr.TrustDomain), "error", err)
				continue
			}
			out[r.TrustDomain] = r
		}
		if next == "" {
			break
		}
		page.Token = next
	}
	for _, r := range m.cfg.Static {
		r.FromConfig = true
		out[r.TrustDomain] = r
	}
	return out, ok
}

func fromStored(fr *datastore.FederationRelationship) (Relationship, error) {
	td, err := spiffeid.TrustDomainFromString(fr.TrustDomain)
	if err != nil {
		return Relationship{}, err
	}
	r := Relationship{TrustDomain: td, BundleEndpointURL: fr.BundleEndpointURL, Profile: fr.Profile}
	if fr.EndpointSPIFFEID != "" {
		if r.EndpointSPIFFEID, err = spiffeid.FromString(fr.EndpointSPIFFEID); err != nil {
			return Relationship{}, err
		}
	}
	return r, nil
}

// reconcile starts, updates and stops refreshers to match the
// relationships.
func (m *Manager) reconcile(ctx context.Context) {
	m.reconcileMu.Lock()
	defer m.reconcileMu.Unlock()
	if ctx.Err() != nil {
		return
	}
	want, complete := m.relationships(ctx)
	var refreshed map[string]time.Time
	m.mu.Lock()
	var stop []*refresher
	for td, r := range m.refreshers {
		rel, ok := want[td]
		switch {
		case !ok && complete:
			stop = append(stop, r)
			delete(m.refreshers, td)
			if m.cfg.Metrics != nil {
				m.cfg.Metrics.FederationRemoved(td.Name())
			}
			m.log.Info("Trust domain no longer federated: its bundle is kept, no longer refreshed", "trust_domain", td.Name())
		case ok && r.setRelationship(rel):
			m.log.Info("Federation relationship changed", "trust_domain", td.Name(), "bundle_endpoint_url", clip.Cut(rel.BundleEndpointURL, 128), "profile", rel.Profile, "from_config", rel.FromConfig)
		}
		delete(want, td)
	}
	m.mu.Unlock()
	for _, r := range stop {
		r.stop()
	}
	if len(want) > 0 {
		var err error
		if refreshed, err = m.cfg.Store.BundleRefreshes(ctx); err != nil {
			m.log.Warn("Could not read when federated bundles were last refreshed", "error", err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for td, rel := range want {
		r := newRefresher(m, rel, refreshed[td.Name()])
		m.refreshers[td] = r
		if last := refreshed[td.Name()]; !last.IsZero() && m.cfg.Metrics != nil {
			m.cfg.Metrics.FederationLastRefresh(td.Name(), last)
		}
		r.start(ctx)
		m.log.Info("Trust domain is now federated", "trust_domain", td.Name(), "bundle_endpoint_url", clip.Cut(rel.BundleEndpointURL, 128), "profile", rel.Profile, "from_config", rel.FromConfig)
	}
}

func (m *Manager) stopAll() {
	m.mu.Lock()
	rs := slices.Collect(maps.Values(m.refreshers))
	m.refreshers = map[spiffeid.TrustDomain]*refresher{}
	m.runCtx = nil
	m.mu.Unlock()
	for _, r := range rs {
		r.stop()
	}
}

// refresher refreshes one trust domain's bundle.
type refresher struct {
	m    *Manager
	kick chan chan error // a fetch now, its error to the reply
	wake chan struct{}   // a fetch now: the relationship changed

	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	rel    Relationship
	status Status
	// noBundle is set while an https_spiffe fetch waits for a bootstrap
	// bundle.
	noBundle bool
}

func newRefresher(m *Manager, rel Relationship, lastSuccess time.Time) *refresher {
	r := &refresher{m: m, kick: make(chan chan error), wake: make(chan struct{}, 1), done: make(chan struct{}), rel: rel}
	r.status.Relationship = rel
	r.status.LastSuccess = lastSuccess
	return r
}

func (r *refresher) start(ctx context.Context) {
	ctx, r.cancel = context.WithCancel(ctx)
	go func() {
		defer close(r.done)
		r.loop(ctx)
	}()
}

func (r *refresher) stop() {
	r.cancel()
	<-r.done
}

// setRelationship changes the relationship; a change fetches at once. It
// reports whether anything changed.
func (r *refresher) setRelationship(rel Relationship) bool {
	r.mu.Lock()
	changed := r.rel != rel
	r.rel = rel
	r.status.Relationship = rel
	r.mu.Unlock()
	if changed {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
	return changed
}

// refreshNow fetches at once and returns the fetch's error.
func (r *refresher) refreshNow(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case r.kick <- reply:
	case <-r.done:
		return errors.New("the relationship was removed")
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-reply:
		return err
	case <-r.done:
		return errors.New("the relationship was removed")
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *refresher) loop(ctx context.Context) {
	var wait time.Duration // the first fetch at once
	for {
		var reply chan error
		if wait > 0 {
			select {
			case <-ctx.Done():
				return
			case reply = <-r.kick:
			case <-r.wake:
			case <-r.m.clk.After(wait):
			}
		}
		var err error
		wait, err = r.attempt(ctx)
		if ctx.Err() != nil {
			if reply != nil {
				reply <- ctx.Err()
			}
			return
		}
		r.mu.Lock()
		r.status.NextAttempt = r.m.clk.Now().Add(wait)
		r.mu.Unlock()
		if reply != nil {
			reply <- err
		}
	}
}

func (r *refresher) statusAt(now time.Time) Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.status
	s.Now = now
	return s
}

// errNoBundle is an https_spiffe fetch without a bundle to authenticate
// the endpoint.
var errNoBundle = errors.New("no bundle of the trust domain to authenticate its https_spiffe endpoint with: give one (federation create/update -trustDomainBundlePath, or bundle set)")

// attempt fetches once, stores a changed bundle and returns when to try
// again.
func (r *refresher) attempt(ctx context.Context) (time.Duration, error) {
	m := r.m
	r.mu.Lock()
	rel := r.rel
	r.status.LastAttempt = m.clk.Now()
	r.status.Attempts++
	r.mu.Unlock()
	td := rel.TrustDomain

	stored, err := m.cfg.Store.GetBundle(ctx, td.Name())
	if errors.Is(err, datastore.ErrNotFound) {
		stored, err = nil, nil
	}
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		err = fmt.Errorf("read the stored bundle: %w", err)
		return r.failed(rel, stored, err), err
	}
	var opt federation.FetchOption
	switch rel.Profile {
	case datastore.ProfileHTTPSSPIFFE:
		if stored == nil || len(stored.X509Authorities) == 0 {
			// Nothing to fetch with until a bundle is set (BundlesChanged
			// wakes it): check again soon, no network involved.
			r.failed(rel, stored, errNoBundle)
			r.mu.Lock()
			r.noBundle = true
			r.mu.Unlock()
			return m.iv.Min, errNoBundle
		}
		r.mu.Lock()
		r.noBundle = false
		r.mu.Unlock()
		roots := make([]*x509.Certificate, 0, len(stored.X509Authorities))
		for _, a := range stored.X509Authorities {
			c, err := x509.ParseCertificate(a.ASN1)
			if err != nil {
				continue
			}
			roots = append(roots, c)
		}
		opt = federation.WithSPIFFEAuth(x509bundle.FromX509Authorities(td, roots), rel.EndpointSPIFFEID)
	default:
		opt = federation.WithWebPKIRoots(m.cfg.WebPKIRoots)
	}
	fctx, cancel := context.WithTimeout(ctx, m.iv.FetchTimeout)
	fetched, err := federation.FetchBundle(fctx, td, rel.BundleEndpointURL, opt)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		err = explainFetchError(rel, err)
		return r.failed(rel, stored, err), err
	}
	next, err := fromSPIFFE(fetched)
	if err == nil && len(next.X509Authorities) == 0 {
		err = errors.New("the endpoint served a bundle without X.509 authorities")
	}
	if err != nil {
		err = fmt.Errorf("refusing the bundle served: %w", err)
		return r.failed(rel, stored, err), err
	}
	changed := stored == nil || !sameContent(stored, next)
	if changed {
		written, err := m.cfg.Store.SetBundle(ctx, next)
		if err != nil {
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
			err = fmt.Errorf("store the fetched bundle: %w", err)
			return r.failed(rel, stored, err), err
		}
		m.log.Info("Federated bundle updated", "trust_domain", td.Name(), "sequence_number", written.SequenceNumber,
			"x509_authorities", len(written.X509Authorities), "jwt_authorities", len(written.JWTKeys))
	}
	now := m.clk.Now()
	if err := m.cfg.Store.SetBundleRefreshed(ctx, td.Name(), now); err != nil && ctx.Err() == nil {
		m.log.Warn("Could not record the time of a bundle refresh", "trust_domain", td.Name(), "error", err)
	}
	// Agents are told once the refresh time is recorded: the bundle API
	// sends it with the bundle they fetch when woken.
	if changed && m.cfg.OnBundleChange != nil {
		m.cfg.OnBundleChange()
	}
	if m.cfg.Metrics != nil {
		m.cfg.Metrics.FederationRefreshed(td.Name(), now, nil)
	}
	interval := r.interval(next)
	r.mu.Lock()
	if r.status.ConsecutiveFailures > 0 {
		m.log.Info("Federated bundle refreshed again", "trust_domain", td.Name(), "failed_attempts", r.status.ConsecutiveFailures,
			"since", r.status.FailingSince.UTC().Format(time.RFC3339))
	} else if !changed {
		m.log.Debug("Federated bundle unchanged", "trust_domain", td.Name())
	}
	r.status.LastSuccess = now
	r.status.ConsecutiveFailures = 0
	r.status.FailingSince = time.Time{}
	r.status.Interval = interval
	if changed {
		r.status.Updates++
	}
	r.mu.Unlock()
	return jitter(interval), nil
}

// interval is the refresh interval of a bundle: its refresh hint, bounded.
func (r *refresher) interval(b *datastore.Bundle) time.Duration {
	iv := r.m.iv
	if b == nil || b.RefreshHint <= 0 {
		return iv.Default
	}
	return min(max(time.Duration(b.RefreshHint)*time.Second, iv.Min), iv.Max)
}

// jitter is d minus up to a quarter.
func jitter(d time.Duration) time.Duration {
	return d - time.Duration(rand.Int64N(int64(d)/4+1))
}

// failed records a failed attempt and returns the backoff.
func (r *refresher) failed(rel Relationship, stored *datastore.Bundle, err error) time.Duration {
	m := r.m
	now := m.clk.Now()
	msg := clip.Cut(err.Error(), maxErrorLen)
	if m.cfg.Metrics != nil {
		m.cfg.Metrics.FederationRefreshed(rel.TrustDomain.Name(), now, err)
	}
	r.mu.Lock()
	r.status.Failures++
	r.status.ConsecutiveFailures++
	n := r.status.ConsecutiveFailures
	if n == 1 {
		r.status.FailingSince = now
	}
	sameError := r.status.LastError == msg
	r.status.LastError, r.status.LastErrorAt = msg, now
	lastSuccess := r.status.LastSuccess
	interval := r.interval(stored)
	r.status.Interval = interval
	r.mu.Unlock()

	attrs := []any{"trust_domain", rel.TrustDomain.Name(), "bundle_endpoint_url", clip.Cut(rel.BundleEndpointURL, 128), "error", msg, "failed_attempts", n}
	if stored != nil {
		attrs = append(attrs, "bundle_kept", true)
	}
	if !lastSuccess.IsZero() {
		attrs = append(attrs, "bundle_age", now.Sub(lastSuccess).Round(time.Second).String())
	}
	// The first failure, a new error, and then every tenth: a peer cut off
	// for days does not flood the log.
	if n == 1 || !sameError || n%10 == 0 {
		m.log.Warn("Could not refresh a federated bundle", attrs...)
	} else {
		m.log.Debug("Could not refresh a federated bundle", attrs...)
	}
	backoff := m.iv.BackoffBase
	for i := 1; i < n && backoff < interval; i++ {
		backoff *= 2
	}
	return jitter(min(backoff, interval))
}

// explainFetchError adds what an operator can do to some fetch errors.
func explainFetchError(rel Relationship, err error) error {
	var hostErr x509.HostnameError
	if rel.Profile == datastore.ProfileHTTPSWeb && errors.As(err, &hostErr) && hostErr.Certificate != nil && len(hostErr.Certificate.URIs) > 0 {
		if id, idErr := spiffeid.FromURI(hostErr.Certificate.URIs[0]); idErr == nil {
			return fmt.Errorf("%w (the endpoint presents the X509-SVID %q: its profile is probably https_spiffe, not https_web)", err, id)
		}
	}
	return err
}
