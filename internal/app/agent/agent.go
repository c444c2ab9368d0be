// Package agent assembles sigil-agent: the workload cache (persisted in
// data_dir), the server-facing manager (attestation, push sync, renewal),
// the workload attestors and the agent socket's endpoints serving the
// Workload API and Envoy SDS, run under one errgroup. The
// plugins (node attestor, key manager, workload attestors) are whatever
// the configuration declares, built by the agent's catalog
// (internal/catalog/agent): nothing here knows an individual plugin.
//
// It must stay small for devices: nothing here (or below) may import SQL
// drivers, server packages or Kubernetes code; a test enforces it.
package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/agent/endpoints"
	"github.com/sigil-spiffe/sigil/internal/agent/fsdelivery"
	"github.com/sigil-spiffe/sigil/internal/agent/manager"
	"github.com/sigil-spiffe/sigil/internal/agent/sds"
	"github.com/sigil-spiffe/sigil/internal/agent/workloadapi"
	"github.com/sigil-spiffe/sigil/internal/agent/workloadattest"
	agentcatalog "github.com/sigil-spiffe/sigil/internal/catalog/agent"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/datadir"
	"github.com/sigil-spiffe/sigil/internal/healthcheck"
	"github.com/sigil-spiffe/sigil/internal/telemetry"
	"github.com/sigil-spiffe/sigil/internal/version"
)

// Options are test and embedding hooks; the zero value is production.
type Options struct {
	Clock clock.Clock
}

// Agent is an assembled, not yet running sigil-agent.
type Agent struct {
	cfg   *config.Agent
	log   *slog.Logger
	clk   clock.Clock
	cache *cache.Cache
	mgr   *manager.Manager
	ep    *endpoints.Endpoints
	fsd   *fsdelivery.Delivery
	// metrics is the agent's one registry, served on the health listener's
	// MetricsPath and by exporter (telemetry.Prometheus), when configured.
	metrics  *telemetry.Registry
	exporter *telemetry.Exporter
	// lock is data_dir's, held from New until Run returns (or Close).
	lock *datadir.Lock
	// plugins are the configured plugins, for the start-up log.
	plugins []string
	// closers are the plugins holding resources (io.Closer), closed when
	// Run returns (or by Close).
	closers []io.Closer
}

// New loads the persisted state and builds every component. It does not
// contact the server: an agent whose server is unreachable still starts and
// serves what it has.
func New(ctx context.Context, cfg *config.Agent, log *slog.Logger, opts Options) (_ *Agent, err error) {
	clk := clock.OrReal(opts.Clock)
	pre, err := preflight(ctx, cfg)
	if err != nil {
		return nil, err
	}
	// One process per data_dir: taken before anything in it is read or
	// written.
	lock, err := datadir.Acquire(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	var closers []io.Closer
	keep := func(v any) {
		if c, ok := v.(io.Closer); ok {
			closers = append(closers, c)
		}
	}
	defer func() {
		if err != nil {
			closeAll(log, closers)
			lock.Release()
		}
	}()
	if err := CheckTrustDomain(cfg.DataDir, cfg.TrustDomain); err != nil {
		return nil, err
	}
	km, err := pre.plugins.KeyManager().Build(ctx, agentcatalog.KeyManagerDeps{DataDir: cfg.DataDir, Log: log.With("subsystem", "key_manager")})
	if err != nil {
		return nil, err
	}
	keep(km)
	leftovers := []string{cfg.DataDir}
	if d, ok := km.(interface{ Dir() string }); ok {
		leftovers = append(leftovers, d.Dir())
	}
	if err := lock.RemoveLeftovers(log, leftovers...); err != nil {
		return nil, err
	}
	attestor, err := pre.plugins.NodeAttestor().Build(ctx, agentcatalog.NodeAttestorDeps{
		TrustDomain: cfg.TrustDomain, JoinToken: cfg.JoinToken, DataDir: cfg.DataDir, Clock: clk,
		Log: log.With("subsystem", "node_attestor", "node_attestor", pre.plugins.NodeAttestor().Plugin().Name),
	})
	if err != nil {
		return nil, err
	}
	keep(attestor)
	var plugins []workloadattest.Plugin
	for _, w := range pre.plugins.WorkloadAttestors() {
		name := w.Plugin().Name
		a, err := w.Build(ctx, agentcatalog.WorkloadAttestorDeps{Clock: clk, Log: log.With("subsystem", "workload_attestor", "attestor", name)})
		if err != nil {
			return nil, err
		}
		keep(a)
		plugins = append(plugins, workloadattest.Plugin{Name: name, Attestor: a})
	}

	reg := telemetry.NewRegistry(telemetry.AgentPrefix)
	metrics := telemetry.NewAgent(reg)
	c := cache.New(cache.Config{Dir: cfg.DataDir, TrustDomain: cfg.TrustDomain, Clock: clk, Log: log.With("subsystem", "cache"),
		MaxJWTSVIDs: cfg.JWTSVIDCacheMaxSize})
	if err := c.Load(); err != nil {
		// Nothing of a file Load refuses is applied: start empty, as on a
		// first start; the server resends the entries and SVIDs.
		log.Warn("Ignoring the persisted workload cache; starting with an empty one", "error", err)
	}
	mgr, err := manager.New(manager.Config{
		Servers:           cfg.Servers(),
		TrustDomain:       cfg.TrustDomain,
		TrustBundle:       pre.bundle,
		InsecureBootstrap: cfg.InsecureBootstrap,
		Attestor:          attestor,
		DataDir:           cfg.DataDir,
		Keys:              km,
		Cache:             c,
		Clock:             clk,
		Log:               log.With("subsystem", "manager"),
		// availability_target: renew SVIDs (workloads' and the agent's)
		// once less than max(half-life, target) is left.
		AvailabilityTarget: cfg.AvailabilityTarget,
		AgentVersion:       version.String(),
		Metrics:            metrics,
	})
	if err != nil {
		return nil, err
	}
	attestors, err := workloadattest.New(workloadattest.Config{Plugins: plugins, Log: log.With("subsystem", "workload_attestor"), Metrics: metrics})
	if err != nil {
		return nil, err
	}
	wl, err := workloadapi.New(workloadapi.Config{
		Cache:                   c,
		JWTMinter:               mgr,
		AllowedForeignJWTClaims: cfg.AllowedForeignJWTClaims,
		Log:                     log.With("subsystem", "workload_api"),
		Clock:                   clk,
	})
	if err != nil {
		return nil, err
	}
	services := []endpoints.Service{wl}
	if !cfg.DisableSDSAPI {
		for _, w := range cfg.SDS.Warnings() {
			log.Warn(w)
		}
		sdsAPI, err := sds.New(sds.Config{
			Cache:                       c,
			DefaultSVIDName:             cfg.SDS.DefaultSVIDName,
			DefaultBundleName:           cfg.SDS.DefaultBundleName,
			DefaultAllBundlesName:       cfg.SDS.DefaultAllBundlesName,
			DisableSPIFFECertValidation: cfg.SDS.DisableSPIFFECertValidation,
			Log:                         log.With("subsystem", "sds"),
			Clock:                       clk,
		})
		if err != nil {
			return nil, err
		}
		services = append(services, sdsAPI)
	}
	ep, err := endpoints.New(endpoints.Config{
		SocketPath: cfg.SocketPath,
		Attestor:   attestors,
		Services:   services,
		Observer:   metrics,
		Log:        log.With("subsystem", "endpoints"),
	})
	if err != nil {
		return nil, err
	}
	var targets []fsdelivery.Target
	for _, f := range cfg.FilesystemDelivery {
		targets = append(targets, fsdelivery.Target{Name: f.Name, SPIFFEID: f.SPIFFEID, Directory: f.Directory, FileMode: f.FileMode, UID: f.UID, GID: f.GID})
	}
	fsd, err := fsdelivery.New(fsdelivery.Config{Targets: targets, Cache: c, Log: log.With("subsystem", "filesystem_delivery"), Clock: clk})
	if err != nil {
		return nil, err
	}
	registerStatusMetrics(reg, mgr.Status)
	reg.GaugeFunc("sigil_agent_entries", "Registration entries the agent holds (its authorized entries, persisted in data_dir).",
		func() float64 { return float64(len(c.Entries())) })
	var exporter *telemetry.Exporter
	if p := cfg.Telemetry.Prometheus; p != nil {
		exporter, err = telemetry.NewExporter(telemetry.ExporterConfig{
			Addr: net.JoinHostPort(p.Host, strconv.Itoa(p.Port)), Registry: reg, Log: log.With("subsystem", "telemetry"),
		})
		if err != nil {
			return nil, err
		}
	}
	return &Agent{cfg: cfg, log: log, clk: clk, cache: c, mgr: mgr, ep: ep, fsd: fsd, metrics: reg, exporter: exporter,
		lock: lock, plugins: pre.plugins.Names(), closers: closers}, nil
}

// Metrics is the agent's metric registry.
func (a *Agent) Metrics() *telemetry.Registry { return a.metrics }

// MetricsAddr is the bound address of the telemetry Prometheus exporter
// (nil when not configured or not yet listening).
func (a *Agent) MetricsAddr() net.Addr {
	if a.exporter == nil {
		return nil
	}
	return a.exporter.Addr()
}

// Close releases what New took (the plugins' resources, the data_dir lock)
// if Run is never called.
func (a *Agent) Close() error {
	closeAll(a.log, a.closers)
	return a.lock.Release()
}

// closeAll closes the plugins that hold resources, logging failures.
func closeAll(log *slog.Logger, closers []io.Closer) {
	for _, c := range closers {
		if err := c.Close(); err != nil {
			log.Warn("Failed to close a plugin", "error", err)
		}
	}
}

// CheckTrustDomain returns a *datadir.TrustDomainError if the agent state
// persisted in dataDir (its SVID, its workload cache; each records its
// trust domain) belongs to another trust domain than td. It only reads.
func CheckTrustDomain(dataDir string, td spiffeid.TrustDomain) error {
	for _, f := range []struct {
		name string
		read func(string) (string, error)
	}{
		{manager.StateFile, manager.PersistedTrustDomain},
		{cache.FileName, cache.PersistedTrustDomain},
	} {
		found, err := f.read(dataDir)
		if err != nil {
			return fmt.Errorf("data_dir %s: %w", dataDir, err)
		}
		if found != "" && found != td.Name() {
			return &datadir.TrustDomainError{Dir: dataDir, Found: found, Configured: td.Name(), Source: "per " + filepath.Join(dataDir, f.name)}
		}
	}
	return nil
}

// Ready is closed once the agent socket (Workload API) accepts connections.
func (a *Agent) Ready() <-chan struct{} { return a.ep.Ready() }

// Status reports the manager's connection state.
func (a *Agent) Status() manager.Status { return a.mgr.Status() }

// Run serves until ctx ends. The Workload API starts at once from the
// persisted cache; the manager connects to the server in the background.
func (a *Agent) Run(ctx context.Context) error {
	defer a.lock.Release()
	defer closeAll(a.log, a.closers)
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.cache.Run(ctx) })
	g.Go(func() error { return a.ep.Run(ctx) })
	if a.exporter != nil {
		g.Go(func() error { return a.exporter.Run(ctx) })
	}
	// The manager (which may attest, consuming a join token) starts once
	// the Workload API socket is ours: an agent refused its socket (another
	// agent serves on it) stops without having contacted the server.
	select {
	case <-a.ep.Ready():
	case <-ctx.Done():
		return g.Wait()
	}
	g.Go(func() error { return a.mgr.Run(ctx) })
	g.Go(func() error { return a.fsd.Run(ctx) })
	if hc := a.cfg.HealthChecks; hc.ListenerEnabled {
		g.Go(func() error { return a.serveHealth(ctx, hc) })
	}
	a.log.Info("Starting sigil-agent", "trust_domain", a.cfg.TrustDomain.Name(), "servers", strings.Join(a.cfg.Servers(), ","),
		"socket_path", a.cfg.SocketPath, "plugins", a.plugins)
	return g.Wait()
}

// serveHealth is SPIRE's health_checks listener, plus MetricsPath. The
// agent is ready while it can serve: a disconnected agent still serves its
// cached identities, so it stays ready and says it is degraded (since
// when, earliest SVID expiry); once nothing valid is left it is expired and
// not ready.
func (a *Agent) serveHealth(ctx context.Context, hc config.HealthChecks) error {
	handlers := map[string]http.Handler{}
	if MetricsPath != hc.LivePath && MetricsPath != hc.ReadyPath {
		handlers[MetricsPath] = a.metrics.Handler()
	} else {
		a.log.Warn("health_checks: a probe path is "+MetricsPath+"; metrics are not served", "live_path", hc.LivePath, "ready_path", hc.ReadyPath)
	}
	return healthcheck.Serve(ctx, healthcheck.Config{
		Addr:      net.JoinHostPort(hc.BindAddress, strconv.Itoa(hc.BindPort)),
		LivePath:  hc.LivePath,
		ReadyPath: hc.ReadyPath,
		Ready: func() (bool, string) {
			select {
			case <-a.ep.Ready():
			default:
				return false, "not ready: Workload API starting"
			}
			return readiness(a.mgr.Status(), a.clk.Now())
		},
		Handlers: handlers,
	})
}
