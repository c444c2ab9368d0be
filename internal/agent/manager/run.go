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
		var delay time.Duration
		if rv := (*revocation)(nil); errors.As(err, &rv) {
			// The node failed to prove itself: it loses its identity,
			// and attests again after a pause.
			m.revoke(ctx, rv.r)
			delay = bo.next()
		} else {
			if r, ok := client.RefusalOf(err); ok && r.Revokes() {
				m.revoke(ctx, r)
				bo.reset()
				continue
			} else if ok && r.Kind == client.MustReattest && m.mustReattest(r) {
				continue
			}
			if m.Status().LastSync.After(before) {
				// The session worked for a while: reconnect quickly.
				bo.reset()
			}
			m.setDegraded(err)
			if errors.Is(err, errNoIdentity) || errors.Is(err, errTokenUsed) {
				if !loggedNoIdentity {
					m.log.Error("The agent cannot authenticate to the server: its SVID is missing or expired and it has no unused join token; "+
						"serving cached identities until they expire. Restart the agent with a new join token to re-attest.",
						"agent_id", m.identity().agentID().String(), "node_attestor", m.cfg.Attestor.Type(), "error", err)
					loggedNoIdentity = true
				}
				delay = m.cfg.MaxBackoff
			} else {
				delay = bo.next()
				lvl := m.log.Debug
				if now := m.clk.Now(); err.Error() != lastLogged || now.Sub(lastLoggedAt) >= failureLogInterval {
					lvl, lastLogged, lastLoggedAt = m.log.Warn, err.Error(), now
				}
				revoked := m.Status().State == StateRevoked
				if le := (*localError)(nil); errors.As(err, &le) {
					// Not the server: say which plugin failed, and how.
					msg := "Could not attest: the node attestor failed on this host (not the server); serving from cache and retrying"
					switch {
					case revoked && le.kind == "KeyManager":
						msg = "Attesting again failed on this host (the key manager, not the server); the agent stays revoked and retries"
					case revoked:
						msg = "Attesting again failed on this host (the node attestor, not the server); the agent stays revoked and retries"
					case le.kind == "KeyManager":
						msg = "Could not make the agent key: the key manager failed on this host (not the server); serving from cache and retrying"
					}
					lvl(msg, "failed_plugin", le.plugin, "retry_in", delay, "error", le.err)
				} else {
					msg := "Server session ended; serving from cache and retrying"
					if revoked {
						msg = "Attesting again failed; the agent stays revoked and retries"
					}
					lvl(msg, "servers", m.servers.String(), "retry_in", delay, "error", err)
				}
			}
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
		Servers:     m.servers,
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
		case <-m.renewNow:
			m.log.Info("Renewing the agent SVID: the server tainted its authority", "spiffe_id", id.svid.ID.String())
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
// no identity, an expired one, or after a revocation, when the attestor
// can attest (a single-use credential only when not known to be spent)
// and, after a ban, only when the ban predates this process's first
// successful session.
func (m *Manager) ensureIdentity(ctx context.Context) (*identity, error) {
	id := m.identity()
	if id.usable(m.clk.Now()) {
		return id, nil
	}
	revoked := id == nil && !m.Status().RevokedAt.IsZero()
	switch {
	case revoked && !m.canAttestAgain():
		return nil, errRevoked
	case !m.hasCredential():
		return nil, errNoIdentity
	case m.spentCredential():
		return nil, errTokenUsed
	}
	bundle := m.serverBundle()
	if len(bundle) == 0 && !m.cfg.InsecureBootstrap {
		return nil, errors.New("no trust bundle to authenticate the server (set trust_bundle_path or insecure_bootstrap)")
	}
	name := m.cfg.Attestor.Type()
	switch {
	case revoked:
		m.log.Info("Attesting again after the server refused the agent", "node_attestor", name)
	case id != nil:
		m.log.Warn("The persisted agent SVID is expired; attesting again", "agent_id", id.svid.ID.String(), "node_attestor", name)
	}
	next, err := m.attest(ctx, bundle, id)
	if err != nil {
		return nil, m.attestationFailed(err, revoked)
	}
	m.mu.Lock()
	m.spent = m.single != nil
	m.firstStart = false
	m.mu.Unlock()
	m.setIdentity(next)
	m.log.Info("Node attestation succeeded", "spiffe_id", next.svid.ID.String(), "expires_at", next.svid.Certificates[0].NotAfter,
		"node_attestor", name, "reattestable", next.reattestable)
	return next, nil
}

// attestationFailed classifies a failed attestation by ensureIdentity.
// Anything but the server's final answer is retried (unreachable server,
// timeout, the attestor failing locally). A final answer ends Run on a
// first start (as SPIRE's agent exits). Otherwise a single-use credential
// is spent by it; an attestor that can repeat its proof, refused as not
// proving the node (client.ReattestationRefused), revokes the agent and
// tries again later with backoff.
func (m *Manager) attestationFailed(err error, revoked bool) error {
	name := m.cfg.Attestor.Type()
	msg, refused := client.AttestationRefused(err)
	if !refused {
		return fmt.Errorf("node attestation: %w", err)
	}
	m.mu.Lock()
	first := m.firstStart
	if m.single != nil {
		m.spent = true
	}
	m.mu.Unlock()
	refusedErr := fmt.Errorf("node attestation (NodeAttestor %q) refused by the server: %s", name, msg)
	switch {
	case first:
		return &fatalError{err: refusedErr}
	case m.single != nil:
		m.log.Error("The server refused the join token; the agent cannot attest with it. Restart the agent with a new join token.", "node_attestor", name, "error", msg)
		return refusedErr
	}
	if r, ok := client.ReattestationRefused(err); ok && !revoked {
		return &revocation{r: r}
	}
	return refusedErr
}

// spentCredential reports whether the single-use credential is known to
// be used or refused.
func (m *Manager) spentCredential() bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.spent
}

// renewAgent renews the agent SVID: by attesting again when the server
// said the attestor can repeat its proof (reattestable), else with
// RenewAgent over the authenticated connection cl.
func (m *Manager) renewAgent(ctx context.Context, cl *client.Client, id *identity) error {
	// The session's identity predates the roots its syncs added to the
	// trust bundle (updateServerBundle), such as a next CA that may sign
	// the new SVID: renew against the bundle as it is now.
	if cur := m.identity(); cur != nil && cur.svid == id.svid {
		id = cur
	}
	if id.reattestable && m.single == nil {
		return m.reattest(ctx, id)
	}
	next, err := m.renew(ctx, cl, id)
	m.cfg.Metrics.SVIDRenewed(RenewalAgent, err)
	if err != nil {
		return fmt.Errorf("renew agent SVID: %w", err)
	}
	m.setIdentity(next)
	m.log.Info("Renewed the agent SVID", "spiffe_id", next.svid.ID.String(), "expires_at", next.svid.Certificates[0].NotAfter)
	return errRenewed
}

// reattest renews the agent SVID by attesting again, as SPIRE's agent
// does for reattestable attestors: the node proves itself anew, so one
// that no longer can (a revoked device certificate, changed measurements)
// loses its identity now rather than keeping it until it expires. A
// refusal (client.ReattestationRefused) returns a *revocation; other
// failures are retried.
func (m *Manager) reattest(ctx context.Context, id *identity) error {
	next, err := m.attest(ctx, m.serverBundle(), id)
	m.cfg.Metrics.SVIDRenewed(RenewalAgent, err)
	if err != nil {
		if r, ok := client.ReattestationRefused(err); ok {
			return &revocation{r: r}
		}
		return fmt.Errorf("re-attest (NodeAttestor %q): %w", m.cfg.Attestor.Type(), err)
	}
	m.setIdentity(next)
	if next.svid.ID != id.svid.ID {
		m.log.Warn("Re-attestation gave the node another agent ID", "previous", id.svid.ID.String(), "spiffe_id", next.svid.ID.String())
	}
	m.log.Info("Re-attested the node: new agent SVID", "spiffe_id", next.svid.ID.String(), "expires_at", next.svid.Certificates[0].NotAfter,
		"node_attestor", m.cfg.Attestor.Type(), "reattestable", next.reattestable)
	return errRenewed
}

// mustReattest acts on AGENT_MUST_REATTEST (the server refuses RenewAgent
// for a node whose attestor can repeat its proof): the agent SVID is due
// now and renewed by attestation. It returns false when the attestor
// cannot repeat its proof (a single-use join token): then the agent keeps
// its SVID until it expires.
func (m *Manager) mustReattest(r client.Refusal) bool {
	if m.single != nil {
		m.log.Error("The server requires the agent to attest again instead of renewing its SVID, but its node attestor's credential is single use; "+
			"the agent keeps its SVID until it expires", "node_attestor", m.cfg.Attestor.Type(), "error", r.Message)
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.id == nil {
		return false
	}
	next := *m.id
	next.reattestable, next.renewAt = true, m.clk.Now()
	m.id = &next
	m.log.Info("The server requires re-attestation instead of renewal; attesting again", "node_attestor", m.cfg.Attestor.Type())
	return true
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
func (m *Manager) applyRound(ctx context.Context, cl *client.Client, r *client.Round) (err error) {
	m.syncMu.Lock()
	defer m.syncMu.Unlock()
	start := time.Now()
	defer func() { m.cfg.Metrics.SyncRound(time.Since(start), err) }()
	if err := m.cache.SetEntries(r.Entries); err != nil {
		m.log.Warn("Some synced entries were rejected by the cache", "error", err)
	}
	// Bundles are fetched while the SVIDs are signed, but the SVIDs are
	// stored only once the bundles are: a workload's first response for a
	// new entry then carries the bundles of the trust domains it federates
	// with, not an SVID without them.
	bundlesDone := make(chan struct{})
	var bundleErr error
	var tainted int
	go func() {
		defer close(bundlesDone)
		tainted, bundleErr = m.syncBundles(ctx, cl, r.Entries)
	}()
	svidErr := m.signDue(ctx, cl, bundlesDone)
	<-bundlesDone
	if tainted > 0 && svidErr == nil {
		// SVIDs of a newly tainted authority: renewed now.
		svidErr = m.signDue(ctx, cl, nil)
	}
	if err := errors.Join(bundleErr, svidErr); err != nil {
		return err
	}
	m.setConnected(r.Server)
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
	return m.signDue(ctx, cl, nil)
}

// syncBundles fetches our bundle and those of the trust domains the
// entries federate with, and drops federated bundles no entry needs. It
// returns how many cached X509-SVIDs it marked for renewal because the
// server newly tainted their authority (processTaints).
func (m *Manager) syncBundles(ctx context.Context, cl *client.Client, entries []*cache.Entry) (int, error) {
	own, taints, err := cl.GetBundle(ctx)
	if err != nil {
		return 0, err
	}
	if err := m.cache.SetBundle(own); err != nil {
		return 0, fmt.Errorf("cache bundle: %w", err)
	}
	m.updateServerBundle(own)
	tainted := m.processTaints(taints)

	want := make(map[spiffeid.TrustDomain]struct{})
	for _, e := range entries {
		for _, td := range e.FederatesWith {
			if td != m.cfg.TrustDomain {
				want[td] = struct{}{}
			}
		}
	}
	for td := range want {
		b, refreshedAt, err := cl.GetFederatedBundle(ctx, td)
		if errors.Is(err, client.ErrBundleNotFound) {
			m.log.Warn("Federated bundle not found on the server", "trust_domain", td.String())
			continue
		}
		if err != nil {
			return tainted, err
		}
		if err := m.cache.SetBundleRefreshed(b, refreshedAt); err != nil {
			return tainted, fmt.Errorf("cache federated bundle: %w", err)
		}
	}
	for td := range m.cache.Bundles() {
		if _, ok := want[td]; !ok && td != m.cfg.TrustDomain {
			if err := m.cache.RemoveBundle(td); err != nil {
				m.log.Warn("Failed to drop a federated bundle", "trust_domain", td.String(), "error", err)
			}
		}
	}
	return tainted, nil
}

// processTaints acts once on each authority the server newly marks
// tainted, as SPIRE's agent does: cached X509-SVIDs it signed are renewed
// (the count is returned), the agent SVID too if it signed it (the session
// renews it now), and cached JWT-SVIDs signed with a tainted key are
// dropped so the next request mints one with the current key.
func (m *Manager) processTaints(t client.Taints) int {
	var x509New []*x509.Certificate
	for _, c := range t.X509 {
		if _, ok := m.taintsSeen["x509:"+string(c.Raw)]; !ok {
			m.taintsSeen["x509:"+string(c.Raw)] = struct{}{}
			x509New = append(x509New, c)
		}
	}
	jwtNew := make(map[string]struct{})
	for kid := range t.JWT {
		if _, ok := m.taintsSeen["jwt:"+kid]; !ok {
			m.taintsSeen["jwt:"+kid] = struct{}{}
			jwtNew[kid] = struct{}{}
		}
	}
	n := 0
	if len(x509New) > 0 {
		n = m.cache.TaintX509SVIDs(x509New)
		agent := false
		if id := m.identity(); id != nil && cache.SignedBy(id.svid.Certificates, x509New, m.clk.Now()) {
			agent = true
			select {
			case m.renewNow <- struct{}{}:
			default:
			}
		}
		m.log.Info("The server tainted X.509 authorities: renewing the SVIDs they signed", "authorities", len(x509New),
			"workload_svids", n, "agent_svid", agent)
	}
	if len(jwtNew) > 0 {
		dropped := m.cache.DropJWTSVIDsSignedBy(jwtNew)
		m.log.Info("The server tainted JWT authorities: dropped the cached JWT-SVIDs they signed", "authorities", len(jwtNew), "jwt_svids", dropped)
	}
	return n
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
	if err := saveState(m.cfg.DataDir, m.cfg.TrustDomain.Name(), &agentState{svid: next.svid.Certificates, keyID: next.keyID, bundle: roots, reattestable: next.reattestable}); err != nil {
		m.log.Error("Failed to persist the trust bundle", "dir", m.cfg.DataDir, "error", err)
	}
}

func sameCerts(a, b []*x509.Certificate) bool {
	return slices.EqualFunc(a, b, func(x, y *x509.Certificate) bool { return x.Equal(y) })
}

// signDue generates a key and CSR for every entry needing an SVID, has
// them signed in batches and stores the results (once storeAfter, when
// given, is closed).
func (m *Manager) signDue(ctx context.Context, cl *client.Client, storeAfter <-chan struct{}) error {
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
		m.cfg.Metrics.SVIDRenewed(RenewalWorkload, r.Err)
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
	if err != nil {
		// The batches that failed as a whole: their SVIDs were not signed.
		for range len(due) - len(results) {
			m.cfg.Metrics.SVIDRenewed(RenewalWorkload, err)
		}
	}
	if len(svids) > 0 {
		if storeAfter != nil {
			<-storeAfter
		}
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
