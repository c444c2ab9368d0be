package telemetry

import (
	"strings"
	"sync"
	"time"
)

// Attestation results (sigil_server_node_attestations_total's result).
const (
	ResultSuccess = "success"
	// ResultFailure: the agent's attestation was refused (bad or used
	// credential, refused proof, unknown attestation type…).
	ResultFailure = "failure"
	// ResultError: the server could not complete it (internal error,
	// unavailable, a rate limit, the client went away).
	ResultError = "error"
)

// OtherAttestor is the attestor label of an attestation whose type is not
// a configured node attestor (the label's values stay bounded whatever
// agents send).
const OtherAttestor = "other"

// SVID kinds (sigil_server_svids_signed_total's kind).
const (
	SVIDKindX509         = "x509"          // workload X509-SVIDs (BatchNewX509SVID, MintX509SVID)
	SVIDKindJWT          = "jwt"           // JWT-SVIDs (NewJWTSVID, MintJWTSVID)
	SVIDKindAgent        = "agent_x509"    // agent X509-SVIDs (AttestAgent, RenewAgent)
	SVIDKindDownstreamCA = "downstream_ca" // intermediate CAs of downstream servers
)

// Server is sigil-server's metrics. It implements the Metrics interfaces of
// the server's components (endpoints, entry cache, datastore wrapper,
// federation); a nil *Server records nothing.
type Server struct {
	rpcs          *Counter
	rpcLatency    *Histogram
	syncStreams   *Gauge
	attestations  *Counter
	attestLatency *Histogram
	rateLimited   *Counter
	held          *Counter
	svids         *Counter
	dsOps         *Histogram
	dsErrors      *Counter
	cacheLag      *Histogram
	cacheSynced   *Gauge
	fedRefresh    *Counter
	fedRefreshed  *Gauge

	mu        sync.RWMutex
	attestors map[string]bool
}

// NewServer registers the server's metrics in reg.
func NewServer(reg *Registry) *Server {
	if reg == nil {
		return nil
	}
	return &Server{
		rpcs: reg.Counter("sigil_server_rpcs_total",
			"Server API calls (agent and admin APIs, both listeners) by gRPC service, method and status code.", "service", "method", "code"),
		rpcLatency: reg.Histogram("sigil_server_rpc_duration_seconds",
			"Duration of server API calls by gRPC service and method (streams: until they end).", "service", "method"),
		syncStreams: reg.Gauge("sigil_server_sync_streams",
			"SyncAuthorizedEntries streams open: one per connected Sigil agent in watch mode, briefly one per SPIRE agent sync."),
		attestations: reg.Counter("sigil_server_node_attestations_total",
			"Node attestations (AttestAgent calls) by attestor (the attestation type, \"other\" for one not configured) and result: success, failure (refused) or error (the server could not complete it).", "attestor", "result"),
		attestLatency: reg.Histogram("sigil_server_node_attestation_duration_seconds",
			"Duration of node attestations by attestor, challenge/response included.", "attestor"),
		rateLimited: reg.Counter("sigil_server_ratelimit_rejections_total",
			"Requests refused (ResourceExhausted) by a rate limit: attestation or signing.", "limit"),
		held: reg.Counter("sigil_server_ratelimit_held_failures_total",
			"Failed attestations whose answer was held back because their source exceeded its failure budget."),
		svids: reg.Counter("sigil_server_svids_signed_total",
			"Certificates and tokens the CA signed for API calls, by kind: x509 (workload X509-SVIDs), jwt (JWT-SVIDs), agent_x509 (agent X509-SVIDs), downstream_ca (downstream servers' CAs).", "kind"),
		dsOps: reg.Histogram("sigil_server_datastore_operation_duration_seconds",
			"Duration of datastore operations by operation (the store method).", "operation"),
		dsErrors: reg.Counter("sigil_server_datastore_operation_errors_total",
			"Datastore operations that failed (not answers such as not found or already exists), by operation.", "operation"),
		cacheLag: reg.Histogram("sigil_server_entry_cache_apply_lag_seconds",
			"Time from a committed write on this server to its application in the entry cache (what agents are told)."),
		cacheSynced: reg.Gauge("sigil_server_entry_cache_last_sync_timestamp_seconds",
			"Unix time of the entry cache's last successful application of the entry and node journals (every poll interval, default 1s)."),
		fedRefresh: reg.Counter("sigil_server_federation_bundle_refreshes_total",
			"Federated bundle refreshes from bundle endpoints, by trust domain and result (success, error).", "trust_domain", "result"),
		fedRefreshed: reg.Gauge("sigil_server_federation_bundle_last_refresh_timestamp_seconds",
			"Unix time of the last successful refresh of a federated trust domain's bundle from its bundle endpoint.", "trust_domain"),
		attestors: map[string]bool{},
	}
}

// SetAttestors names the configured node attestors: the only values the
// attestor label takes besides OtherAttestor.
func (s *Server) SetAttestors(names []string) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attestors = map[string]bool{}
	for _, n := range names {
		s.attestors[n] = true
	}
}

func (s *Server) attestor(typ string) string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.attestors[typ] {
		return typ
	}
	return OtherAttestor
}

// splitMethod splits a gRPC full method (/pkg.Service/Method).
func splitMethod(full string) (service, method string) {
	full = strings.TrimPrefix(full, "/")
	if i := strings.LastIndexByte(full, '/'); i >= 0 {
		return full[:i], full[i+1:]
	}
	return "unknown", full
}

// RPC records a finished server API call (endpoints.Metrics). fullMethod
// is a registered method (gRPC refuses others before interceptors run), so
// the labels stay bounded.
func (s *Server) RPC(fullMethod, code string, d time.Duration) {
	if s == nil {
		return
	}
	svc, m := splitMethod(fullMethod)
	s.rpcs.Inc(svc, m, code)
	s.rpcLatency.Observe(d, svc, m)
}

// syncMethod is the stream sigil_server_sync_streams counts.
const syncMethod = "/spire.api.server.entry.v1.Entry/SyncAuthorizedEntries"

// StreamStarted records an open stream (endpoints.Metrics); the returned
// func records its end.
func (s *Server) StreamStarted(fullMethod string) (done func()) {
	if s == nil || fullMethod != syncMethod {
		return func() {}
	}
	s.syncStreams.Add(1)
	return func() { s.syncStreams.Add(-1) }
}

// Attestation records a finished AttestAgent call (endpoints.Metrics):
// the attestation type the agent sent ("" when it sent none) and the
// result (ResultSuccess, ResultFailure, ResultError).
func (s *Server) Attestation(attestationType, result string, d time.Duration) {
	if s == nil {
		return
	}
	a := s.attestor(attestationType)
	s.attestations.Inc(a, result)
	s.attestLatency.Observe(d, a)
}

// RateLimited records a request refused by a rate limit ("attestation" or
// "signing") or a connection shed before its TLS handshake ("handshake"),
// endpoints.Metrics.
func (s *Server) RateLimited(limit string) {
	if s == nil {
		return
	}
	s.rateLimited.Inc(limit)
}

// FailureHeld records a failed attestation whose answer was held back
// (endpoints.Metrics).
func (s *Server) FailureHeld() {
	if s == nil {
		return
	}
	s.held.Inc()
}

// SVIDSigned records a signature of the CA of the given kind (SVIDKind…).
func (s *Server) SVIDSigned(kind string) {
	if s == nil {
		return
	}
	s.svids.Inc(kind)
}

// DatastoreOperation records a datastore operation (dsmetrics.Observer).
func (s *Server) DatastoreOperation(op string, d time.Duration, failed bool) {
	if s == nil {
		return
	}
	s.dsOps.Observe(d, op)
	if failed {
		s.dsErrors.Inc(op)
	}
}

// EntryCacheSynced records an application of the journals
// (entrycache.Metrics).
func (s *Server) EntryCacheSynced(at time.Time, lag time.Duration, pending bool) {
	if s == nil {
		return
	}
	s.cacheSynced.SetTime(at)
	if pending {
		s.cacheLag.Observe(lag)
	}
}

// FederationRefreshed records a refresh of trust domain td's bundle from
// its bundle endpoint, at at; err is its failure, nil on success. Only
// configured relationships are refreshed, so td stays bounded.
func (s *Server) FederationRefreshed(td string, at time.Time, err error) {
	if s == nil {
		return
	}
	if err != nil {
		s.fedRefresh.Inc(td, ResultError)
		return
	}
	s.fedRefresh.Inc(td, ResultSuccess)
	s.fedRefreshed.SetTime(at, td)
}

// FederationLastRefresh sets td's last-refresh gauge to at without
// counting a refresh: the time kept across restarts, reported when td's
// refresher starts, so the bundle's age stays known while its endpoint is
// unreachable.
func (s *Server) FederationLastRefresh(td string, at time.Time) {
	if s == nil {
		return
	}
	s.fedRefreshed.SetTime(at, td)
}

// FederationRemoved drops td's last-refresh series (no longer federated).
func (s *Server) FederationRemoved(td string) {
	if s == nil {
		return
	}
	s.fedRefreshed.Delete(td)
}

// ObserveChangeListener registers
// sigil_server_datastore_listener_connected, read from state at every
// scrape: 1 while the datastore's change listener (PostgreSQL LISTEN: the
// other servers' writes pushed to this one) holds its connection, 0 while
// it reconnects and other servers' writes are seen by polling only; no
// sample when the datastore has no listener (SQLite).
func (s *Server) ObserveChangeListener(reg *Registry, state func() (listens, connected bool)) {
	if s == nil || reg == nil {
		return
	}
	const name = "sigil_server_datastore_listener_connected"
	reg.GaugeSet([]Desc{
		{Name: name, Help: "1 while the datastore change listener (PostgreSQL LISTEN: other servers' writes pushed to this one) is connected, 0 while other servers' writes are seen by polling only; absent on SQLite."},
	}, func() map[string][]Sample {
		listens, connected := state()
		if !listens {
			return nil
		}
		v := 0.0
		if connected {
			v = 1
		}
		return map[string][]Sample{name: {{Value: v}}}
	})
}

// ServerState is what the server's state gauges report, read at every
// scrape.
type ServerState struct {
	Entries, Agents, BannedAgents int
	// X509CA and JWTKey are the active (signing) authorities' lifetimes;
	// zero before the CA is initialized.
	X509CA, JWTKey struct{ NotBefore, NotAfter time.Time }
}

// ObserveState registers the state gauges, computed by state at every
// scrape (cheap: from memory).
func (s *Server) ObserveState(reg *Registry, state func() ServerState) {
	if s == nil || reg == nil {
		return
	}
	reg.GaugeSet([]Desc{
		{Name: "sigil_server_entries", Help: "Registration entries (in the entry cache)."},
		{Name: "sigil_server_agents", Help: "Attested agents, by banned (true or false).", Labels: []string{"banned"}},
		{Name: "sigil_server_ca_expiry_timestamp_seconds", Help: "Unix time at which the active (signing) authority expires, by kind: x509 (the X.509 CA certificate) or jwt (the JWT signing key).", Labels: []string{"kind"}},
		{Name: "sigil_server_ca_issued_timestamp_seconds", Help: "Unix time at which the active (signing) authority's lifetime began, by kind (x509, jwt).", Labels: []string{"kind"}},
	}, func() map[string][]Sample {
		st := state()
		return map[string][]Sample{
			"sigil_server_entries": {{Value: float64(st.Entries)}},
			"sigil_server_agents": {
				{Labels: []string{"false"}, Value: float64(st.Agents - st.BannedAgents)},
				{Labels: []string{"true"}, Value: float64(st.BannedAgents)},
			},
			"sigil_server_ca_expiry_timestamp_seconds": {
				{Labels: []string{"x509"}, Value: UnixSeconds(st.X509CA.NotAfter)},
				{Labels: []string{"jwt"}, Value: UnixSeconds(st.JWTKey.NotAfter)},
			},
			"sigil_server_ca_issued_timestamp_seconds": {
				{Labels: []string{"x509"}, Value: UnixSeconds(st.X509CA.NotBefore)},
				{Labels: []string{"jwt"}, Value: UnixSeconds(st.JWTKey.NotBefore)},
			},
		}
	})
}
