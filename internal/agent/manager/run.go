package manager

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/agent/client"
)

// failureLogInterval rate-limits repeated connection failure logs.
const failureLogInterval = 5 * time.Minute

// errRenewed ends a session so the next one dials with the new agent SVID.
var errRenewed = errors.New("agent SVID renewed")

// errNoIdentity: no usable agent SVID and no way to get one.
var errNoIdentity = errors.New("no usable agent SVID and no join token to attest with")

// Run connects to the server and keeps the cache in sync until ctx is
// done. It returns nil on cancellation; it does not return on server
// errors (it reconnects), except one: an agent that never had an identity
// and whose join token the server refuses returns that error (as SPIRE's
// agent exits). When the server revokes the agent and it cannot attest
// again, Run waits for ctx, serving nothing.
func (m *Manager) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	reportCtx, stopReport := context.WithCancel(ctx)
	wg.Go(func() { m.reportState(reportCtx) })
	defer func() {
		stopReport()
		wg.Wait()
	}()
	bo := newBackoff(m.cfg.MinBackoff, m.cfg.MaxBackoff)
	loggedNoIdentity := false
	// Failures are logged at Warn when they change or every
	// failureLogInterval, else at Debug: a device offline for days must
	// not fill its log.
	var lastLogged string
	var lastLoggedAt time.Time
	for {
		before := m.Status().LastSync
		err := m.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errRenewed) {
			bo.reset()
			continue
		}
		if fe := (*fatalError)(nil); errors.As(err, &fe) {
			return fe.err
		}
		if errors.Is(err, errRevoked) {
			// Nothing left to try: the state stays revoked (the reporter
			// keeps reminding) until the process is restarted.
			m.log.Info("Not attesting again: the agent stays revoked until it is restarted", "next", m.recoveryHint())
			<-ctx.Done()
			return nil
		}
		if r, ok := client.RefusalOf(err); ok && r.Revokes() {
			m.revoke(ctx, r)
			bo.reset()
			continue
		}
		if m.Status().LastSync.After(before) {
			// The session worked for a while: reconnect quickly.
			bo.reset()
		}
		m.setDegraded(err)
		var delay time.Duration
		if errors.Is(err, errNoIdentity) || errors.Is(err, errTokenUsed) {
			if !loggedNoIdentity {
				m.log.Error("The agent cannot authenticate to the server: its SVID is missing or expired and it has no unused join token; "+
					"serving cached identities until they expire. Restart the agent with a new join token to re-attest.",
					"agent_id", m.identity().agentID().String(), "error", err)
				loggedNoIdentity = true
			}
			delay = m.cfg.MaxBackoff
		} else {
			delay = bo.next()
			lvl := m.log.Debug
			if now := m.clk.Now(); err.Error() != lastLogged || now.Sub(lastLoggedAt) >= failureLogInterval {
				lvl, lastLogged, lastLoggedAt = m.log.Warn, err.Error(), now
			}
			lvl("Server session ended; serving from cache and retrying", "addr", m.cfg.ServerAddr, "retry_in", delay, "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-m.clk.After(delay):
		}
	}
}

// session establishes an authenticated connection and syncs until it
// fails. It returns errRenewed after renewing the agent SVID.
func (m *Manager) session(ctx context.Context) (err error) {
	id, err := m.ensureIdentity(ctx)
	if err != nil {
		return err
	}
	cl, err := client.Dial(client.Config{
		Addr:        m.cfg.ServerAddr,
		TrustDomain: m.cfg.TrustDomain,
		Bundle:      m.serverBundle,
		SVID:        m.AgentSVID,
		Log:         m.log,
		DialOptions: m.cfg.DialOptions,
	})
	if err != nil {
		return err
	}
	defer func() {
		m.cl.CompareAndSwap(cl, nil)
		_ = cl.Close()
	}()

	if !m.clk.Now().Before(id.renewAt) {
		return m.renewAgent(ctx, cl, id)
	}

	// The watcher writes to the cache: the session (and so Run) returns
	// only after it has stopped (cancel runs first, then Wait).
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m.cl.Store(cl)
	wg.Go(func() { m.postStatus(ctx, cl, id) })

	// Until the server proves it pushes changes, poll at SyncInterval.
	var pushed atomic.Bool
	watchErr := make(chan error, 1)
	wg.Go(func() {
		watchErr <- cl.WatchEntries(ctx, m.knownEntries(), func(r *client.Round) error {
			if err := m.applyRound(ctx, cl, r); err != nil {
				return err
			}
			if r.Pushed && !pushed.Swap(true) {
				m.setWatchMode(true)
				m.log.Debug("Server pushes entry changes (watch mode)")
			}
			return nil
		})
	})

	interval := func() time.Duration {
		if pushed.Load() {
			return m.cfg.SafetySyncInterval
		}
		return min(m.cfg.SyncInterval, m.cfg.SafetySyncInterval)
	}
	safety := m.clk.After(interval())
	renew := m.clk.After(id.renewAt.Sub(m.clk.Now()))
	rotate := m.rotationTimer()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-watchErr:
			if errors.Is(err, client.ErrWatchUnsupported) {
				m.log.Info("Server has no watch-mode sync; polling", "interval", m.cfg.SyncInterval)
				watchErr = nil
				continue
			}
			if err == nil {
				err = errors.New("entry watch ended")
			}
			return err
		case <-safety:
			r, err := cl.SyncEntries(ctx, m.knownEntries())
			if err != nil {
				return err
			}
			if err := m.applyRound(ctx, cl, r); err != nil {
				return err
			}
			safety = m.clk.After(interval())
		case <-rotate:
			if err := m.rotate(ctx, cl); err != nil {
				return err
			}
			rotate = m.rotationTimer()
		case <-m.kick:
			rotate = m.rotationTimer()
		case <-renew:
			return m.renewAgent(ctx, cl, id)
		}
	}
}

// postStatus reports the agent's version for identity id unless it was
// already reported for that agent ID. A failure (a server without
// PostStatus, or one that is going away) is logged at debug and retried
// with the next session: it never ends the session.
func (m *Manager) postStatus(ctx context.Context, cl *client.Client, id *identity) {
	agentID := id.agentID().String()
	if m.cfg.AgentVersion == "" || m.statusPostedFor.Load() == agentID {
		return
	}
	if err := cl.PostStatus(ctx, m.cfg.AgentVersion); err != nil {
		m.log.Debug("Could not report the agent version to the server", "agent_version", m.cfg.AgentVersion, "error", err)
		return
	}
	m.statusPostedFor.Store(agentID)
}

// ensureIdentity returns a usable agent SVID, attesting if needed: with
// no identity, an expired one, or after a revocation, when the join token
// is not known to be spent (and, after a ban, only when the ban predates
// this process's first successful session).
func (m *Manager) ensureIdentity(ctx context.Context) (*identity, error) {
	id := m.identity()
	if id.usable(m.clk.Now()) {
		return id, nil
	}
	revoked := id == nil && !m.Status().RevokedAt.IsZero()
	switch {
	case revoked && !m.canReattest():
		return nil, errRevoked
	case m.cfg.JoinToken == "":
		return nil, errNoIdentity
	case m.spentToken():
		return nil, errTokenUsed
	}
	bundle := m.serverBundle()
	if len(bundle) == 0 && !m.cfg.InsecureBootstrap {
		return nil, errors.New("no trust bundle to authenticate the server (set trust_bundle_path or insecure_bootstrap)")
	}
	switch {
	case revoked:
		m.log.Info("Attesting again with the join token after the server refused the agent SVID")
	case id != nil:
		m.log.Warn("The persisted agent SVID is expired; attesting again with the join token", "agent_id", id.svid.ID.String())
	}
	id, err := m.attest(ctx, bundle)
	if err != nil {
		msg, refused := client.AttestationRefused(err)
		if !refused {
			return nil, fmt.Errorf("node attestation: %w", err)
		}
		m.mu.Lock()
		m.tokenUsed = true
		first := m.firstStart
		m.mu.Unlock()
		err = fmt.Errorf("node attestation with the join token refused by the server: %s", msg)
		if first {
			return nil, &fatalError{err: err}
		}
		m.log.Error("The server refused the join token; the agent cannot attest with it. Restart the agent with a new join token.", "error", msg)
		return nil, err
	}
	m.mu.Lock()
	m.tokenUsed, m.firstStart = true, false
	m.mu.Unlock()
	m.setIdentity(id)
	m.log.Info("Node attestation succeeded", "spiffe_id", id.svid.ID.String(), "expires_at", id.svid.Certificates[0].NotAfter)
	return id, nil
}

// spentToken reports whether the configured join token is known to be
// used or refused.
func (m *Manager) spentToken() bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.tokenUsed
}

func (m *Manager) renewAgent(ctx context.Context, cl *client.Client, id *identity) error {
	next, err := m.renew(ctx, cl, id)
	if err != nil {
		return fmt.Errorf("renew agent SVID: %w", err)
	}
	m.setIdentity(next)
	m.log.Info("Renewed the agent SVID", "spiffe_id", next.svid.ID.String(), "expires_at", next.svid.Certificates[0].NotAfter)
	return errRenewed
}

// knownEntries snapshots the cached entries for delta sync.
func (m *Manager) knownEntries() client.KnownFunc {
	entries := m.cache.Entries()
	byID := make(map[string]*cache.Entry, len(entries))
	for _, e := range entries {
		byID[e.ID] = e
	}
	return func(id string) (*cache.Entry, bool) {
		e, ok := byID[id]
		return e, ok
	}
}

// applyRound stores a round's entries, then signs the SVIDs that are due
// while refreshing bundles.
func (m *Manager) applyRound(ctx context.Context, cl *client.Client, r *client.Round) error {
	m.syncMu.Lock()
	defer m.syncMu.Unlock()
	if err := m.cache.SetEntries(r.Entries); err != nil {
		m.log.Warn("Some synced entries were rejected by the cache", "error", err)
	}
	var wg sync.WaitGroup
	var bundleErr error
	wg.Go(func() { bundleErr = m.syncBundles(ctx, cl, r.Entries) })
	svidErr := m.signDue(ctx, cl)
	wg.Wait()
	if err := errors.Join(bundleErr, svidErr); err != nil {
		return err
	}
	m.setConnected()
	m.setSynced()
	m.wake()
	return nil
}

func (m *Manager) wake() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// rotate signs SVIDs that became due since the last round.
func (m *Manager) rotate(ctx context.Context, cl *client.Client) error {
	m.syncMu.Lock()
	defer m.syncMu.Unlock()
	return m.signDue(ctx, cl)
}

// syncBundles fetches our bundle and those of the trust domains the
// entries federate with, and drops federated bundles no entry needs.
func (m *Manager) syncBundles(ctx context.Context, cl *client.Client, entries []*cache.Entry) error {
	own, err := cl.GetBundle(ctx)
	if err != nil {
		return err
	}
	if err := m.cache.SetBundle(own); err != nil {
		return fmt.Errorf("cache bundle: %w", err)
	}
	m.updateServerBundle(own)

	want := make(map[spiffeid.TrustDomain]struct{})
	for _, e := range entries {
		for _, td := range e.FederatesWith {
			if td != m.cfg.TrustDomain {
				want[td] = struct{}{}
			}
		}
	}
	for td := range want {
		b, err := cl.GetFederatedBundle(ctx, td)
		if errors.Is(err, client.ErrBundleNotFound) {
			m.log.Warn("Federated bundle not found on the server", "trust_domain", td.String())
			continue
		}
		if err != nil {
			return err
		}
		if err := m.cache.SetBundle(b); err != nil {
			return fmt.Errorf("cache federated bundle: %w", err)
		}
	}
	for td := range m.cache.Bundles() {
		if _, ok := want[td]; !ok && td != m.cfg.TrustDomain {
			if err := m.cache.RemoveBundle(td); err != nil {
				m.log.Warn("Failed to drop a federated bundle", "trust_domain", td.String(), "error", err)
			}
		}
	}
	return nil
}

// updateServerBundle adopts and persists our trust domain's authorities
// when they changed (CA rotation), so later connections trust new roots.
func (m *Manager) updateServerBundle(b *spiffebundle.Bundle) {
	roots := b.X509Authorities()
	if len(roots) == 0 {
		return
	}
	m.mu.Lock()
	id := m.id
	if id == nil || sameCerts(id.bundle, roots) {
		m.mu.Unlock()
		return
	}
	next := *id
	next.bundle = roots
	m.id = &next
	m.mu.Unlock()
	if err := saveState(m.cfg.DataDir, m.cfg.TrustDomain.Name(), &agentState{svid: next.svid.Certificates, keyID: next.keyID, bundle: roots}); err != nil {
		m.log.Error("Failed to persist the trust bundle", "dir", m.cfg.DataDir, "error", err)
	}
}

func sameCerts(a, b []*x509.Certificate) bool {
	return slices.EqualFunc(a, b, func(x, y *x509.Certificate) bool { return x.Equal(y) })
}

// signDue generates a key and CSR for every entry needing an SVID, has
// them signed in batches and stores the results.
func (m *Manager) signDue(ctx context.Context, cl *client.Client) error {
	due := m.cache.NeedsSVID(m.clk.Now(), m.cfg.RenewBefore)
	if len(due) == 0 {
		return nil
	}
	keys := make([]*ecdsa.PrivateKey, len(due))
	reqs := make([]client.X509SVIDRequest, len(due))
	if err := parallel(len(due), func(i int) error {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return fmt.Errorf("generate key: %w", err)
		}
		csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
		if err != nil {
			return fmt.Errorf("create CSR: %w", err)
		}
		keys[i] = k
		reqs[i] = client.X509SVIDRequest{EntryID: due[i].ID, CSR: csr}
		return nil
	}); err != nil {
		return err
	}
	results, err := cl.BatchNewX509SVID(ctx, reqs)
	svids := make(map[string]*cache.X509SVID, len(results))
	for i, r := range results {
		if r.Err != nil {
			lvl := m.log.Warn
			if status.Code(r.Err) == codes.NotFound {
				lvl = m.log.Debug // entry removed meanwhile; the next round drops it
			}
			lvl("Server did not sign the SVID of an entry", "entry_id", r.EntryID, "error", r.Err)
			continue
		}
		svids[r.EntryID] = &cache.X509SVID{Chain: r.Chain, PrivateKey: keys[i]}
	}
	if len(svids) > 0 {
		if serr := m.cache.SetX509SVIDs(svids); serr != nil {
			m.log.Warn("Some SVIDs were rejected by the cache", "error", serr)
		}
		m.log.Debug("Stored workload SVIDs", "count", len(svids))
		if m.cfg.AvailabilityTarget > 0 {
			current := make(map[string]struct{})
			for _, e := range m.cache.Entries() {
				current[e.ID] = struct{}{}
			}
			m.forgetShortLived(current)
			for _, d := range due {
				if s, ok := svids[d.ID]; ok {
					m.warnShortLived(d.ID, d.SPIFFEID, s.Chain[0].NotBefore, s.Chain[0].NotAfter)
				}
			}
		}
	}
	return err
}

// rotationTimer fires at the earliest future renewal point of the
// cached SVIDs, or after SyncInterval when some entry is due now but could
// not be signed (so a persistent failure is retried, not spun on); nil
// when there is nothing to wait for.
func (m *Manager) rotationTimer() <-chan time.Time {
	now := m.clk.Now()
	var next time.Time
	if len(m.cache.NeedsSVID(now, m.cfg.RenewBefore)) > 0 {
		next = now.Add(m.cfg.SyncInterval)
	}
	for _, e := range m.cache.Entries() {
		s, ok := m.cache.X509SVID(e.ID)
		if !ok {
			continue
		}
		leaf := s.Chain[0]
		at := dueTime(m.cfg.RenewBefore, leaf.NotBefore, leaf.NotAfter)
		if at.After(now) && (next.IsZero() || at.Before(next)) {
			next = at
		}
	}
	if next.IsZero() {
		return nil
	}
	return m.clk.After(next.Sub(now))
}

// parallel runs fn(0..n-1) on up to GOMAXPROCS goroutines and returns the
// first error.
func parallel(n int, fn func(i int) error) error {
	workers := min(n, runtime.GOMAXPROCS(0))
	if workers <= 1 {
		for i := range n {
			if err := fn(i); err != nil {
				return err
			}
		}
		return nil
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		next  = make(chan int)
	)
	for range workers {
		wg.Go(func() {
			for i := range next {
				if err := fn(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return first
}
