package telemetry

import (
	"time"

	"google.golang.org/grpc/codes"
)

// Agent is sigil-agent's metrics (besides its state gauges, which the
// agent's wiring registers from its status). It implements the Metrics
// interfaces of the agent's components (socket endpoints, workload
// attestors, manager); a nil *Agent records nothing.
type Agent struct {
	rpcs            *Counter
	rpcLatency      *Histogram
	attestorLatency *Histogram
	attestorErrors  *Counter
	syncLatency     *Histogram
	syncErrors      *Counter
	renewals        *Counter
}

// NewAgent registers the agent's metrics in reg.
func NewAgent(reg *Registry) *Agent {
	if reg == nil {
		return nil
	}
	return &Agent{
		rpcs: reg.Counter("sigil_agent_rpcs_total",
			"Calls on the agent socket (the Workload API, SDS, health) by gRPC service, method and status code.", "service", "method", "code"),
		rpcLatency: reg.Histogram("sigil_agent_rpc_duration_seconds",
			"Duration of calls on the agent socket by gRPC service and method (a stream's: until it ends).", "service", "method"),
		attestorLatency: reg.Histogram("sigil_agent_workload_attestor_duration_seconds",
			"Time a workload attestor took to answer for one caller, by attestor (plugin name).", "attestor"),
		attestorErrors: reg.Counter("sigil_agent_workload_attestor_errors_total",
			"Workload attestations that failed or timed out, by attestor (plugin name).", "attestor"),
		syncLatency: reg.Histogram("sigil_agent_sync_duration_seconds",
			"Duration of sync rounds with the server: entries stored, bundles fetched, the SVIDs due signed."),
		syncErrors: reg.Counter("sigil_agent_sync_errors_total",
			"Sync rounds that failed."),
		renewals: reg.Counter("sigil_agent_svid_renewals_total",
			"SVIDs the agent had the server sign, by kind (workload: an entry's SVID, its first one included; agent: its own, renewed or re-attested) and result (success, error).", "kind", "result"),
	}
}

// CallDone records a finished call on the agent socket (the agent
// endpoints' CallObserver). fullMethod is a registered method (gRPC
// refuses others before interceptors run).
func (a *Agent) CallDone(fullMethod string, code codes.Code, d time.Duration) {
	if a == nil {
		return
	}
	svc, m := splitMethod(fullMethod)
	a.rpcs.Inc(svc, m, code.String())
	a.rpcLatency.Observe(d, svc, m)
}

// WorkloadAttestorDone records a workload attestor's answer
// (workloadattest.Metrics). Plugin names are the configured ones.
func (a *Agent) WorkloadAttestorDone(plugin string, d time.Duration, err error) {
	if a == nil {
		return
	}
	a.attestorLatency.Observe(d, plugin)
	if err != nil {
		a.attestorErrors.Inc(plugin)
	}
}

// SyncRound records a sync round (manager.Metrics).
func (a *Agent) SyncRound(d time.Duration, err error) {
	if a == nil {
		return
	}
	a.syncLatency.Observe(d)
	if err != nil {
		a.syncErrors.Inc()
	}
}

// SVIDRenewed records an SVID signed or refused (manager.Metrics).
func (a *Agent) SVIDRenewed(kind string, err error) {
	if a == nil {
		return
	}
	result := ResultSuccess
	if err != nil {
		result = ResultError
	}
	a.renewals.Inc(kind, result)
}
