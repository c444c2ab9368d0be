// Package manager is the server-facing half of the agent: node attestation
// (through the configured node attestor, Config.Attestor), the agent SVID
// and its renewal, entry sync, workload SVID signing and rotation,
// bundles, and JWT-SVID minting for the Workload API.
//
// It is offline first. New restores the persisted agent SVID; the
// workload state lives in the cache (internal/agent/cache), which the app
// loads and serves before Run even starts. Run connects in the background,
// reconnecting with capped exponential backoff and jitter, and never
// blocks workloads: while the server is unreachable the cache keeps serving
// whatever is still valid.
//
// Sync uses the watch mode of SyncAuthorizedEntries (the server pushes a
// round whenever the agent's entries or a bundle change), plus a periodic
// safety sync; against a server without watch mode (SPIRE) it falls back
// to a periodic single-round sync. After every round the manager replaces
// the cache's entries, refreshes bundles (own and federated) and signs a
// fresh key for every entry that needs an SVID (new, changed, or due per
// the renewal policy), batching the CSRs. A timer fires at the earliest
// renewal point of any cached SVID.
//
// Status reports a State: connected; degraded (server unreachable, cached
// SVIDs still served, with the earliest expiry); expired (nothing valid
// left to serve); revoked (the server refused the agent). When the agent
// is degraded or expired because a plugin failed on this host (the node
// attestor could not attest, the key manager could not make the agent
// key) rather than because of the server, Status.FailedPlugin names it and
// the logs say so. Run logs the
// transitions (WARN degraded, ERROR expired, ERROR revoked, INFO back to
// connected) and repeats a degraded, expired or revoked state every
// StateLogInterval. With AvailabilityTarget (SPIRE's availability_target)
// SVIDs are renewed once less than max(half-life, target) is left.
//
// # JWT-SVIDs
//
// MintJWTSVID serves the Workload API: a cached JWT-SVID before its
// half-life, else one minted by the server (NewJWTSVID) and cached (and
// persisted, see internal/agent/cache). When no session is up, or the
// server does not answer or fails, it serves the cached token of the same
// SPIFFE ID and audience set until shortly before its exp
// (cache.OfflineJWTSVID) and otherwise fails with "server unreachable; no
// cached JWT-SVID for audience ..." (a *cache.NoJWTSVIDError); it never
// signs one itself. Status counts the JWT-SVIDs it can serve that way.
//
// # Unreachable versus refused
//
// Only a refusal revokes: a PermissionDenied carrying SPIRE's
// PermissionDeniedDetails reason AGENT_BANNED (banned), AGENT_NOT_ATTESTED
// or AGENT_NOT_ACTIVE (evicted: the agent record was deleted or another
// SVID is current), as sigil-server and spire-server send on any agent
// call (client.RefusalOf), or the server refusing a re-attestation (see
// below). Everything else (unreachable, TLS failures,
// timeouts, Unavailable from a stopping server, Internal errors,
// AGENT_EXPIRED, the agent's own SVID expiring offline) only degrades:
// cached SVIDs are served until they expire. On a refusal the manager, at
// once: reports StateRevoked; revokes the cache (every workload stream
// ends, filesystem delivery removes its files, the persisted cache is
// deleted); deletes the persisted agent SVID and its keys; logs ERROR with
// the reason. Then it attests again when it can: an evicted agent whose
// attestor can repeat its proof (x509pop, tpm) at once, one with a
// single-use credential (join token) only with an unused one; a banned
// agent only when the ban predates this process (the refusal came before
// any successful sync) and it can attest.
//
// # Node attestation and re-attestation
//
// The manager runs the attestor's session over agent/v1 AttestAgent (data
// and CSR, then one answer per server challenge) without knowing which
// attestor it is. The server's answer says whether the attestor can
// repeat its proof (reattestable, persisted with the SVID). If so, the
// agent SVID is renewed by attesting again instead of RenewAgent, as
// SPIRE's agent does, and also when the server answers RenewAgent with
// AGENT_MUST_REATTEST: a node that no longer proves its identity (a
// revoked device certificate, changed measurements) loses it at the next
// renewal. Such a refusal (PermissionDenied or InvalidArgument, see
// client.ReattestationRefused) revokes the agent like an eviction, and it
// keeps attesting again with backoff while revoked. Other failures
// (unreachable server, the attestor failing locally) are retried.
//
// A single-use credential (SingleUseAttestor: join_token) is presented at
// most once: the manager attests with it when there is no persisted agent
// SVID still usable, or after a revocation as above; a token whose agent
// ID is the persisted SVID's is known to be used and is not sent. The SVID
// is renewed with RenewAgent. An agent that had no persisted identity and
// whose attestation the server refuses (unknown, used or expired token,
// attestation type not accepted, proof refused) makes Run return that
// error, so the process exits, as SPIRE's agent does; unreachable servers
// are retried. The agent SVID is persisted in DataDir (agent_svid.json,
// 0600, atomic writes) together with the trust bundle used to authenticate
// the server and the reattestable flag; its key is kept by Config.Keys
// under two alternating IDs so the persisted SVID's key is never replaced
// before the new SVID is persisted.
package manager

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/agent/client"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/keys"
)

// Defaults.
const (
	DefaultSyncInterval       = 5 * time.Second
	DefaultSafetySyncInterval = 30 * time.Second
	DefaultMinBackoff         = 200 * time.Millisecond
	DefaultMaxBackoff         = 30 * time.Second
	// DefaultStateLogInterval is how often a degraded or expired agent
	// repeats its state in the log.
	DefaultStateLogInterval = 10 * time.Minute
)

// Config configures a Manager.
type Config struct {
	// Servers are the servers' host:port (one, or several sharing one
	// database); a host may be a DNS name resolving to several addresses.
	// Every connection goes to the first that answers, in an order that
	// starts at a random place kept for the Manager's lifetime (see
	// client.Servers): agents spread over the servers and move to another
	// when theirs goes away.
	Servers []string
	// TrustDomain is the agent's trust domain.
	TrustDomain spiffeid.TrustDomain
	// TrustBundle bootstraps trust in the server (trust_bundle_path). The
	// persisted bundle, kept up to date by sync, takes precedence.
	TrustBundle []*x509.Certificate
	// InsecureBootstrap attests without authenticating the server when
	// there is neither a persisted nor a configured bundle.
	InsecureBootstrap bool
	// Attestor attests the node: when there is no usable persisted SVID,
	// when the server refuses the agent's SVID (evicted; banned only when
	// the ban predates this start, see the package doc), and, when the
	// server said the attestor can repeat its proof (reattestable), to
	// renew the agent SVID. A SingleUseAttestor's credential (join token)
	// is presented once at most: one whose agent ID is the persisted
	// SVID's has been used and is never sent.
	Attestor NodeAttestor
	// DataDir holds the persisted agent SVID and bundle.
	DataDir string
	// Keys keeps the agent SVID key (keys.NewDisk for persistence across
	// restarts, keys.NewMemory otherwise).
	Keys keys.Manager
	// Cache is the workload cache, loaded by the caller.
	Cache *cache.Cache
	// Clock; nil is the real clock.
	Clock clock.Clock
	// Log; nil discards.
	Log *slog.Logger
	// RenewBefore decides when an SVID (the agent's and workloads') is
	// due for renewal; nil is cache.AvailabilityTargetRenewal of
	// AvailabilityTarget (cache.DefaultRenewal, half-life with jitter,
	// when that is 0). It must be monotonic in now.
	RenewBefore cache.RenewalPolicy
	// AvailabilityTarget is SPIRE's availability_target: how long the
	// agent should be able to serve through an outage. SVIDs are renewed
	// once less than max(half their lifetime, AvailabilityTarget) is left;
	// SVIDs whose whole lifetime is shorter are renewed at half-life and
	// logged once (per entry, and for the agent SVID). 0 disables it.
	AvailabilityTarget time.Duration
	// StateLogInterval is how often a degraded or expired agent repeats
	// its state in the log; 0 is DefaultStateLogInterval.
	StateLogInterval time.Duration
	// SyncInterval is the periodic sync when the server has no watch
	// mode; 0 is DefaultSyncInterval.
	SyncInterval time.Duration
	// SafetySyncInterval is the periodic sync alongside watch mode; 0 is
	// DefaultSafetySyncInterval.
	SafetySyncInterval time.Duration
	// MinBackoff and MaxBackoff bound the reconnect backoff; 0 means the
	// defaults (200 ms, 30 s).
	MinBackoff, MaxBackoff time.Duration
	// DialOptions are passed to every client (tests).
	DialOptions []grpc.DialOption
	// AgentVersion is reported to the server (PostStatus, as SPIRE's
	// agent) once per agent identity, when a session starts; "" reports
	// nothing.
	AgentVersion string
	// Metrics is optional.
	Metrics Metrics
}

// Metrics receives the manager's measurements (internal/telemetry's Agent
// implements it).
type Metrics interface {
	// SyncRound is called after each sync round with the server (entries,
	// bundles and the SVIDs due), with its duration and error.
	SyncRound(d time.Duration, err error)
	// SVIDRenewed is called for each SVID the agent had the server sign:
	// kind "workload" (an entry's SVID, its first one included) or
	// "agent" (the agent's own, renewed or re-attested); err is nil on
	// success.
	SVIDRenewed(kind string, err error)
}

// SVID kinds of Metrics.SVIDRenewed.
const (
	RenewalWorkload = "workload"
	RenewalAgent    = "agent"
)

type noMetrics struct{}

func (noMetrics) SyncRound(time.Duration, error) {}
func (noMetrics) SVIDRenewed(string, error)      {}

// State summarizes what the agent can do for its workloads.
type State string

// States.
const (
	// StateConnected: a session with the server is established.
	StateConnected State = "connected"
	// StateDegraded: the server cannot be reached (or fails); workloads
	// are served the cached SVIDs that are still valid.
	StateDegraded State = "degraded"
	// StateExpired: the server is unreachable and no valid workload SVID
	// is left to serve.
	StateExpired State = "expired"
	// StateRevoked: the server refused the agent's SVID (banned or
	// evicted) or its re-attestation: the agent serves no identity, and
	// has deleted its persisted SVID and workload cache.
	StateRevoked State = "revoked"
)

// Status describes the manager's connection to the server, for health
// checks.
type Status struct {
	// State is connected, degraded, expired or revoked.
	State State
	// SVIDs is the number of unexpired workload X509-SVIDs the agent can
	// serve.
	SVIDs int
	// EarliestSVIDExpiry is the earliest NotAfter among those SVIDs; zero
	// when there are none. While degraded it is when the first workload
	// loses its identity unless the server comes back.
	EarliestSVIDExpiry time.Time
	// JWTSVIDs is the number of cached JWT-SVIDs the agent can serve
	// without the server (each only for the SPIFFE ID and audience set it
	// was minted for; see cache.OfflineJWTSVID), and JWTSVIDsServedUntil
	// the earliest instant one of them stops being served (zero when there
	// are none). While degraded a JWT-SVID for any other audience is
	// refused.
	JWTSVIDs            int
	JWTSVIDsServedUntil time.Time
	// Connected is true while a session with the server is established
	// and its last exchange succeeded.
	Connected bool
	// Server is the address (ip:port) of the server of that session; ""
	// while not connected.
	Server string
	// DegradedSince is when the manager last lost (or failed to establish)
	// the connection; zero while connected.
	DegradedSince time.Time
	// WatchMode is true while the server pushes changes to the agent
	// (watch-mode sync); false while polling (SPIRE server) or offline.
	WatchMode bool
	// LastSync is when the last sync round completed; zero if never.
	LastSync time.Time
	// LastError describes why the manager is degraded.
	LastError string
	// FailedPlugin is set while the agent is not connected because a
	// plugin failed on this host, not the server: the node attestor (a
	// device certificate gone, a TPM unreachable) or the key manager,
	// `NodeAttestor "x509pop"` or `KeyManager`; LastError says how. Empty
	// when the server is unreachable or failing (or refused the agent).
	FailedPlugin string
	// LastErrorAt is when the last session or connection attempt failed.
	LastErrorAt time.Time
	// AgentID is the agent's SPIFFE ID; zero before attestation.
	AgentID spiffeid.ID
	// AgentSVIDExpiresAt is the NotAfter of the agent SVID; zero when
	// there is none (before attestation, after a revocation).
	AgentSVIDExpiresAt time.Time
	// FederatedBundles says, per federated trust domain whose bundle the
	// agent serves, when that bundle was last known current (sorted by
	// trust domain; see cache.BundleUpdate): its age keeps growing while
	// the agent, its server or the peer trust domain are cut off.
	FederatedBundles []cache.BundleUpdate
	// RevokedAt is when the server refused the agent's SVID; zero unless
	// revoked. RevokedReason is the server's reason (SPIRE's
	// PermissionDeniedDetails name, e.g. AGENT_BANNED) and Banned tells a
	// ban from an eviction.
	RevokedAt     time.Time
	RevokedReason string
	Banned        bool
}

// Manager is the agent's server-facing half.
type Manager struct {
	cfg     Config
	servers *client.Servers
	log     *slog.Logger
	clk     clock.Clock
	cache   *cache.Cache

	mu     sync.RWMutex
	id     *identity
	status Status
	// lastBundle authenticates the server after a revocation dropped the
	// identity and the cache that held the current bundle.
	lastBundle []*x509.Certificate
	// single is cfg.Attestor when its credential is single use (join
	// token), else nil.
	single SingleUseAttestor
	// firstStart: no persisted identity was found and none has been
	// obtained since, so a refused attestation ends Run. spent: the
	// single-use credential is known to be spent (it attested the
	// current identity, or the server refused it). sessionOK: a sync
	// round succeeded in this process. bannedWhileRunning: the agent was
	// banned after sessionOK (it then never attests again by itself).
	firstStart         bool
	spent              bool
	sessionOK          bool
	bannedWhileRunning bool

	// cl is the client of the current session (nil while disconnected).
	cl atomic.Pointer[client.Client]
	// syncMu serializes sync rounds and SVID signing.
	syncMu sync.Mutex
	// kick wakes the session loop to re-arm its rotation timer.
	kick chan struct{}
	// renewNow asks the session loop to renew the agent SVID now: its
	// authority was tainted (see processTaints).
	renewNow chan struct{}
	// taintsSeen are the tainted authorities already processed (X.509 by
	// DER, JWT by key ID), so each taint is acted on once per process.
	// Only syncBundles uses it (under syncMu).
	taintsSeen map[string]struct{}
	jwt        singleflight.Group

	// statusChanged wakes the state reporter; attempted is set once the
	// first connection attempt has finished (before that, not being
	// connected is not worth a warning).
	statusChanged chan struct{}
	attempted     bool
	// shortWarned holds the entry IDs ("" for the agent SVID) already
	// reported as living no longer than the availability target.
	shortMu     sync.Mutex
	shortWarned map[string]struct{}
	// statusPostedFor is the agent ID (string) whose version was reported.
	statusPostedFor atomic.Value
}

// New validates cfg and restores the persisted agent SVID. It does not
// contact the server.
func New(cfg Config) (*Manager, error) {
	switch {
	case len(cfg.Servers) == 0:
		return nil, errors.New("manager: server address is required")
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("manager: trust domain is required")
	case cfg.DataDir == "":
		return nil, errors.New("manager: data dir is required")
	case cfg.Keys == nil:
		return nil, errors.New("manager: key manager is required")
	case cfg.Attestor == nil:
		return nil, errors.New("manager: node attestor is required")
	case cfg.Cache == nil:
		return nil, errors.New("manager: cache is required")
	case cfg.Cache.TrustDomain() != cfg.TrustDomain:
		return nil, fmt.Errorf("manager: cache is for trust domain %q, not %q", cfg.Cache.TrustDomain(), cfg.TrustDomain)
	}
	if cfg.AvailabilityTarget < 0 {
		return nil, fmt.Errorf("manager: negative availability target %s", cfg.AvailabilityTarget)
	}
	if cfg.RenewBefore == nil {
		cfg.RenewBefore = cache.AvailabilityTargetRenewal(cfg.AvailabilityTarget)
	}
	// Never rotate a freshly issued SVID, however short the server made it
	// (see cache.MinRotationAge): that would renew in a tight loop.
	cfg.RenewBefore = cache.WithMinAge(cfg.RenewBefore, cache.MinRotationAge)
	if cfg.StateLogInterval <= 0 {
		cfg.StateLogInterval = DefaultStateLogInterval
	}
	if cfg.Metrics == nil {
		cfg.Metrics = noMetrics{}
	}
	if cfg.SyncInterval <= 0 {
		cfg.SyncInterval = DefaultSyncInterval
	}
	if cfg.SafetySyncInterval <= 0 {
		cfg.SafetySyncInterval = DefaultSafetySyncInterval
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	servers, err := client.NewServers(cfg.Servers)
	if err != nil {
		return nil, fmt.Errorf("manager: %w", err)
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{
		cfg:        cfg,
		servers:    servers,
		log:        log,
		clk:        clock.OrReal(cfg.Clock),
		cache:      cfg.Cache,
		kick:       make(chan struct{}, 1),
		renewNow:   make(chan struct{}, 1),
		taintsSeen: make(map[string]struct{}),

		statusChanged: make(chan struct{}, 1),
		shortWarned:   make(map[string]struct{}),
	}
	id, err := m.loadIdentity(context.Background())
	switch {
	case errors.Is(err, errNoState):
	case errors.Is(err, keys.ErrOtherDevice):
		// A data_dir copied from another device: its identity is not
		// this device's, and neither are the workload identities it
		// cached.
		log.Error("The persisted agent SVID's key belongs to another device (a copied data_dir?): not using it, and dropping the persisted workload cache",
			"dir", cfg.DataDir, "error", err)
		if err := cfg.Cache.Revoke(); err != nil {
			log.Error("Failed to drop the persisted workload cache", "error", err)
		}
	case err != nil:
		log.Warn("Ignoring the persisted agent SVID", "dir", cfg.DataDir, "error", err)
	default:
		m.id = id
		log.Info("Restored the persisted agent SVID", "spiffe_id", id.svid.ID.String(),
			"expires_at", id.svid.Certificates[0].NotAfter)
	}
	m.firstStart = m.id == nil
	m.single, _ = cfg.Attestor.(SingleUseAttestor)
	if m.id != nil && m.single != nil {
		if cid, ok := m.single.Credential(cfg.TrustDomain); ok {
			if cid == m.id.svid.ID {
				m.spent = true // the persisted SVID came from it
			} else {
				log.Info("The agent has a persisted SVID: using it, and keeping the configured single-use credential to attest with if the server refuses the SVID",
					"spiffe_id", m.id.svid.ID.String(), "node_attestor", cfg.Attestor.Type())
			}
		}
	}
	now := m.clk.Now()
	m.status = Status{DegradedSince: now, LastError: "not connected yet"}
	if m.id != nil {
		leaf := m.id.svid.Certificates[0]
		m.status.AgentID = m.id.svid.ID
		m.status.AgentSVIDExpiresAt = leaf.NotAfter
		m.warnShortLived("", m.id.svid.ID, leaf.NotBefore, leaf.NotAfter)
	}
	return m, nil
}

// Status returns the current connection status and state.
func (m *Manager) Status() Status {
	m.mu.RLock()
	st := m.status
	m.mu.RUnlock()
	now := m.clk.Now()
	st.SVIDs, st.EarliestSVIDExpiry = m.cache.SVIDStats(now)
	st.JWTSVIDs, st.JWTSVIDsServedUntil = m.cache.JWTSVIDStats(now)
	st.FederatedBundles = m.cache.FederatedBundleUpdates()
	switch {
	case !st.RevokedAt.IsZero():
		st.State = StateRevoked
	case st.Connected:
		st.State = StateConnected
	case st.SVIDs > 0:
		st.State = StateDegraded
	default:
		st.State = StateExpired
	}
	return st
}

// AgentSVID returns the current agent SVID (nil before attestation). It
// may have expired.
func (m *Manager) AgentSVID() *x509svid.SVID {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.id == nil {
		return nil
	}
	return m.id.svid
}

func (m *Manager) identity() *identity {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.id
}

func (m *Manager) setIdentity(id *identity) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.id = id
	m.bannedWhileRunning = false
	m.status.AgentID = id.svid.ID
	m.status.AgentSVIDExpiresAt = id.svid.Certificates[0].NotAfter
	leaf := id.svid.Certificates[0]
	m.warnShortLived("", id.svid.ID, leaf.NotBefore, leaf.NotAfter)
}

// serverBundle is the bundle used to authenticate the server.
func (m *Manager) serverBundle() []*x509.Certificate {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.id != nil && len(m.id.bundle) > 0 {
		return m.id.bundle
	}
	if b, ok := m.cache.Bundle(m.cfg.TrustDomain); ok && len(b.X509Authorities()) > 0 {
		return b.X509Authorities()
	}
	if len(m.lastBundle) > 0 {
		return m.lastBundle
	}
	return m.cfg.TrustBundle
}

func (m *Manager) setConnected(server string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.status.Connected || m.status.Server != server {
		m.log.Info("Connected to the server", "server", server)
	}
	m.status.Server = server
	m.status.Connected = true
	m.status.DegradedSince = time.Time{}
	m.status.LastError, m.status.FailedPlugin = "", ""
	// A revocation ends once the server has authorized a new set for the
	// re-attested agent (the cache's ends with it, in SetEntries).
	m.status.RevokedAt, m.status.RevokedReason, m.status.Banned = time.Time{}, "", false
	m.attempted = true
	m.sessionOK = true
	m.notifyStatus()
}

func (m *Manager) setDegraded(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.status.Connected || m.status.DegradedSince.IsZero() {
		m.status.DegradedSince = m.clk.Now()
	}
	m.status.Connected = false
	m.status.Server = ""
	m.status.WatchMode = false
	m.status.LastError = err.Error()
	m.status.LastErrorAt = m.clk.Now()
	m.status.FailedPlugin = ""
	if le := (*localError)(nil); errors.As(err, &le) {
		m.status.FailedPlugin = le.plugin
	}
	m.attempted = true
	m.notifyStatus()
}

// notifyStatus wakes the state reporter without blocking.
func (m *Manager) notifyStatus() {
	select {
	case m.statusChanged <- struct{}{}:
	default:
	}
}

func (m *Manager) setWatchMode(on bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.status.WatchMode = on
}

func (m *Manager) setSynced() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.status.LastSync = m.clk.Now()
}

// renewAt returns when the policy says an SVID with this leaf is due.
func (m *Manager) renewAt(leaf *x509.Certificate) time.Time {
	return dueTime(m.cfg.RenewBefore, leaf.NotBefore, leaf.NotAfter)
}

// dueTime finds, by bisection to the millisecond, the first instant in
// [notBefore, notAfter] at which the (monotonic) policy reports renewal;
// notAfter when it never does.
func dueTime(policy cache.RenewalPolicy, notBefore, notAfter time.Time) time.Time {
	if !notAfter.After(notBefore) || policy(notBefore, notBefore, notAfter) {
		return notBefore
	}
	if !policy(notAfter, notBefore, notAfter) {
		return notAfter
	}
	lo, hi := notBefore, notAfter // policy(lo) false, policy(hi) true
	for hi.Sub(lo) > time.Millisecond {
		mid := lo.Add(hi.Sub(lo) / 2)
		if policy(mid, notBefore, notAfter) {
			hi = mid
		} else {
			lo = mid
		}
	}
	return hi
}

// MintJWTSVID returns a JWT-SVID for entry and audience: from the cache
// while it is before its half-life, else minted by the server (concurrent
// identical requests share one call). While the server cannot mint one
// (unreachable, or failing) it serves the cached token for the same SPIFFE
// ID and audience set until shortly before its exp (cache.OfflineJWTSVID);
// it never mints one itself. Without such a token the error says so: a
// *cache.NoJWTSVIDError, wrapped ("server unreachable; no cached
// JWT-SVID for audience ..."). It implements the Workload API's JWTMinter.
func (m *Manager) MintJWTSVID(ctx context.Context, entry *cache.Entry, audience []string) (string, error) {
	if entry == nil {
		return "", errors.New("mint JWT-SVID: no entry")
	}
	if len(audience) == 0 {
		return "", errors.New("mint JWT-SVID: at least one audience is required")
	}
	if j, ok := m.cache.GetJWTSVID(entry.SPIFFEID, audience); ok {
		return j.Token, nil
	}
	key := jwtFlightKey(entry.ID, audience)
	ch := m.jwt.DoChan(key, func() (any, error) {
		if j, ok := m.cache.GetJWTSVID(entry.SPIFFEID, audience); ok {
			return j.Token, nil
		}
		cl := m.cl.Load()
		if cl == nil {
			return m.offlineJWTSVID(entry, audience, nil)
		}
		// Not tied to one caller's ctx: the result serves every waiter.
		callCtx, cancel := context.WithTimeout(context.Background(), client.DefaultRPCTimeout)
		defer cancel()
		var j cache.JWTSVID
		s, err := cl.NewJWTSVID(callCtx, entry.ID, audience)
		if err == nil {
			j, err = checkMintedJWTSVID(s, entry.SPIFFEID, audience)
		}
		if err != nil {
			return m.offlineJWTSVID(entry, audience, err)
		}
		m.cache.SetJWTSVID(entry.SPIFFEID, audience, j)
		return j.Token, nil
	})
	select {
	case <-ctx.Done():
		return "", fmt.Errorf("mint JWT-SVID: %w", ctx.Err())
	case r := <-ch:
		if r.Err != nil {
			return "", r.Err
		}
		return r.Val.(string), nil
	}
}

// offlineJWTSVID serves the cached JWT-SVID when none can be minted:
// mintErr is why (nil: no session with the server).
func (m *Manager) offlineJWTSVID(entry *cache.Entry, audience []string, mintErr error) (string, error) {
	j, err := m.cache.OfflineJWTSVID(entry.SPIFFEID, audience)
	unreachable := mintErr == nil || client.Unreachable(mintErr)
	switch {
	case err == nil && mintErr == nil:
		m.log.Debug("Server unreachable; serving a cached JWT-SVID", "spiffe_id", entry.SPIFFEID.String(),
			"expires_at", j.ExpiresAt)
		return j.Token, nil
	case err == nil:
		m.log.Warn("Could not mint a JWT-SVID; serving the cached one", "spiffe_id", entry.SPIFFEID.String(),
			"expires_at", j.ExpiresAt, "error", mintErr)
		return j.Token, nil
	case unreachable && mintErr != nil:
		m.log.Debug("Could not reach the server to mint a JWT-SVID", "spiffe_id", entry.SPIFFEID.String(), "error", mintErr)
		return "", fmt.Errorf("server unreachable; %w", err)
	case unreachable:
		return "", fmt.Errorf("server unreachable; %w", err)
	default:
		return "", fmt.Errorf("mint JWT-SVID: %w", mintErr)
	}
}

// checkMintedJWTSVID checks that the server's token is a JWT-SVID for id
// and the requested audience, and returns it for the cache with the
// validity its claims carry (what relying parties go by; iat falls back to
// the issue time the server reported).
func checkMintedJWTSVID(s *client.JWTSVID, id spiffeid.ID, audience []string) (cache.JWTSVID, error) {
	if s.ID != id {
		return cache.JWTSVID{}, fmt.Errorf("server issued it for %s, entry is %s", s.ID, id)
	}
	j, err := cache.JWTSVIDFromToken(s.Token, id, audience)
	if err != nil {
		return cache.JWTSVID{}, fmt.Errorf("server's token: %w", err)
	}
	if j.IssuedAt.IsZero() {
		j.IssuedAt = s.IssuedAt
	}
	return j, nil
}

func jwtFlightKey(entryID string, audience []string) string {
	n := len(entryID)
	for _, a := range audience {
		n += len(a) + 1
	}
	b := make([]byte, 0, n)
	b = append(b, entryID...)
	for _, a := range audience {
		b = append(b, 0)
		b = append(b, a...)
	}
	return string(b)
}
