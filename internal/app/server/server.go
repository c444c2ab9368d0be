// Package server assembles sigil-server from its components: datastore, key
// manager, CA, entry cache, API services and endpoints, run together under
// one errgroup. It is the only place (with cmd/) that knows them all.
package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	agentapi "github.com/sigil-spiffe/sigil/internal/server/api/agent"
	bundleapi "github.com/sigil-spiffe/sigil/internal/server/api/bundle"
	entryapi "github.com/sigil-spiffe/sigil/internal/server/api/entry"
	svidapi "github.com/sigil-spiffe/sigil/internal/server/api/svid"
	trustdomainapi "github.com/sigil-spiffe/sigil/internal/server/api/trustdomain"

	"github.com/sigil-spiffe/sigil/internal/ca"
	servercatalog "github.com/sigil-spiffe/sigil/internal/catalog/server"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/datadir"
	"github.com/sigil-spiffe/sigil/internal/healthcheck"
	"github.com/sigil-spiffe/sigil/internal/profiling"
	"github.com/sigil-spiffe/sigil/internal/server/endpoints"
	"github.com/sigil-spiffe/sigil/internal/server/entrycache"
	"github.com/sigil-spiffe/sigil/internal/server/federation"
	"github.com/sigil-spiffe/sigil/internal/server/prune"
	"github.com/sigil-spiffe/sigil/internal/server/ratelimit"
	"github.com/sigil-spiffe/sigil/internal/server/trustbundle"
	"github.com/sigil-spiffe/sigil/internal/telemetry"
)

// changeFeed is the datastore's change notification (sqlstore.Store):
// the entry cache subscribes to it (OnChange), and Listen, a component,
// delivers the commits of other servers on PostgreSQL.
type changeFeed interface {
	Listen(ctx context.Context) error
}

// changeListener is the datastore's listener state (sqlstore), for the
// listener gauge.
type changeListener interface {
	ChangeListener() (listens, connected bool)
}

// caWithBundle is the CA as the SVID API sees it: a downstream server is
// handed the trust domain's whole bundle (every server's CA), as SPIRE
// does, not only this server's.
type caWithBundle struct {
	*ca.Manager
	trust *trustbundle.Source
}

func (c caWithBundle) X509Authorities() []*x509.Certificate { return c.trust.X509Authorities() }

// Server is an assembled, not yet running sigil-server.
type Server struct {
	cfg   *config.Server
	log   *slog.Logger
	clk   clock.Clock
	ds    servercatalog.DataStore
	ca    *ca.Manager
	cache *entrycache.Cache
	trust *trustbundle.Source
	svid  *serverSVID
	ep    *endpoints.Endpoints
	// metrics is the server's one registry; exporter serves it when
	// telemetry.Prometheus is configured.
	metrics  *telemetry.Registry
	exporter *telemetry.Exporter
	// fed refreshes the federated bundles; bundleEP is the bundle
	// endpoint (nil without one).
	fed      *federation.Manager
	bundleEP *bundleEndpoint
	// upstream is the UpstreamAuthority when it holds resources ("spire":
	// the CA's Run drives it), nil otherwise; Run and Close release it.
	upstream io.Closer
	// pruner deletes expired tokens and entries and old journal events.
	pruner *prune.Pruner
	// profiler is profiling_enabled's pprof listener and dumps (nil when
	// off).
	profiler *profiling.Profiler
	// noListen is Options.NoChangeListener.
	noListen bool
	// lock is data_dir's, held from New until Run returns (or Close).
	lock *datadir.Lock
}

// Options are test and embedding hooks; the zero value is production.
type Options struct {
	Clock clock.Clock
	// NoChangeListener leaves the datastore's change listener (PostgreSQL
	// LISTEN/NOTIFY) off: other servers' writes are then seen by polling
	// only. For benchmarks measuring that fallback.
	NoChangeListener bool
	// ProfilingDir replaces where profiling_freq's dumps go (SPIRE's:
	// .profiles in the working directory).
	ProfilingDir string
}

// New opens the datastore, loads or creates the CA and builds every
// component. Close releases what New opened if Run is never called.
func New(ctx context.Context, cfg *config.Server, log *slog.Logger, opts Options) (s *Server, err error) {
	clk := clock.OrReal(opts.Clock)
	pre, err := preflight(ctx, cfg, log, clk, false)
	if err != nil {
		return nil, err
	}
	warnFederation(cfg, log)
	defer func() {
		if err != nil {
			pre.close()
		}
	}()
	// One process per data_dir: taken before anything in it is read or
	// written.
	lock, err := datadir.Acquire(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			lock.Release()
		}
	}()
	// A data_dir belongs to one trust domain: checked before the datastore
	// is opened (or migrated). recorded is "" for a new data_dir or one of
	// an earlier Sigil; then the CA journal decides (below).
	recorded, err := datadir.CheckTrustDomain(cfg.DataDir, cfg.TrustDomain)
	if err != nil {
		return nil, err
	}
	reg := telemetry.NewRegistry(telemetry.ServerPrefix)
	metrics := telemetry.NewServer(reg)
	ds, err := pre.plugins.DataStore().Build(ctx, servercatalog.DataStoreDeps{Log: log.With("subsystem", "datastore"), Clock: clk})
	if err != nil {
		return nil, fmt.Errorf("open datastore: %w", err)
	}
	ds = meteredStore(ds, metrics)
	defer func() {
		if err != nil {
			ds.Close()
		}
	}()

	km, err := pre.plugins.KeyManager().Build(ctx, servercatalog.KeyManagerDeps{})
	if err != nil {
		return nil, err
	}

	// trust follows the stored bundle (every server's CA); the cache tells
	// it when a bundle changed. Set once the CA exists, before anything
	// runs.
	var trust *trustbundle.Source
	var fedMgr *federation.Manager
	// The bundle endpoint serves what is stored, read again at once after
	// a change (here or by another server).
	hint := config.DefaultBundleEndpointRefreshHint
	if cfg.Federation != nil && cfg.Federation.BundleEndpoint != nil {
		hint = cfg.Federation.BundleEndpoint.RefreshHint
	}
	ownBundle := federation.NewOwnBundleSource(cfg.TrustDomain, ds, hint, clk)
	cache := entrycache.New(entrycache.Config{Store: ds, Clock: clk, Log: log.With("subsystem", "entrycache"),
		Metrics: metrics,
		BundleChanged: func() {
			ownBundle.Invalidate()
			if trust != nil {
				trust.Changed()
			}
			if fedMgr != nil {
				fedMgr.BundlesChanged()
			}
		}})
	caCfg := caConfig(cfg)
	caCfg.Keys, caCfg.Journal, caCfg.Bundles = km, ds, ds
	caCfg.Upstream = pre.upstream
	// The CA's bundle writes reach the cache (and trust) through the
	// store's notification, as every other write.
	caCfg.Clock, caCfg.Log = clk, log.With("subsystem", "ca")
	// This server's own CA journal in the datastore (each server sharing
	// it has its own): recorded in data_dir, else claimed now and recorded
	// once the CA is initialized.
	journal, err := datadir.ReadCAJournal(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	tdMismatch := func(err error) error {
		var mismatch *ca.TrustDomainMismatchError
		if errors.As(err, &mismatch) {
			return &datadir.TrustDomainError{Dir: cfg.DataDir, Found: mismatch.Journal.Name(), Configured: cfg.TrustDomain.Name(), Source: "per the CA journal in its datastore"}
		}
		return nil
	}
	caCfg.JournalName = journal
	if journal == "" {
		// Claiming writes nothing.
		if caCfg.JournalName, err = ca.ClaimJournal(ctx, caCfg, ds); err != nil {
			if tdErr := tdMismatch(err); tdErr != nil {
				return nil, tdErr
			}
			return nil, fmt.Errorf("CA: %w", err)
		}
	}
	m, err := ca.New(caCfg)
	if err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	if err := m.Init(ctx); err != nil {
		if tdErr := tdMismatch(err); tdErr != nil {
			// Init stopped before writing anything.
			return nil, tdErr
		}
		return nil, fmt.Errorf("initialize CA: %w", err)
	}
	// Nothing writes data_dir or the key directory concurrently now (the
	// lock, and Init's writes are done): remove what a killed predecessor
	// left mid-write.
	var keyDir string
	if d, ok := km.(interface{ Dir() string }); ok {
		keyDir = d.Dir()
	}
	if err := lock.RemoveLeftovers(log, cfg.DataDir, keyDir); err != nil {
		return nil, err
	}
	if recorded == "" {
		if err := datadir.WriteTrustDomain(cfg.DataDir, cfg.TrustDomain); err != nil {
			return nil, err
		}
		log.Info("Recorded the trust domain of data_dir", "data_dir", cfg.DataDir, "file", datadir.TrustDomainFile)
	}
	if journal == "" {
		if err := datadir.WriteCAJournal(cfg.DataDir, caCfg.JournalName); err != nil {
			return nil, err
		}
		log.Info("Recorded this server's CA journal in data_dir", "journal", caCfg.JournalName, "file", datadir.CAJournalFile)
	}
	if err := cache.Load(ctx); err != nil {
		return nil, fmt.Errorf("load entry cache: %w", err)
	}
	trust, err = trustbundle.New(trustbundle.Config{TrustDomain: cfg.TrustDomain, Store: ds, Own: m.X509Authorities, Clock: clk, Log: log.With("subsystem", "trustbundle")})
	if err != nil {
		return nil, err
	}
	if err := trust.Refresh(ctx); err != nil {
		return nil, err
	}
	svid, err := newServerSVID(cfg.TrustDomain, m, clk, log.With("subsystem", "server_svid"))
	if err != nil {
		return nil, err
	}
	if err := svid.rotate(ctx); err != nil {
		return nil, err
	}

	attestors, err := pre.plugins.NodeAttestors(ctx, servercatalog.NodeAttestorDeps{
		TrustDomain: cfg.TrustDomain,
		Store:       ds,
		Clock:       clk,
		Log:         log.With("subsystem", "node_attestor"),
	})
	if err != nil {
		return nil, err
	}
	agents, err := agentapi.New(agentapi.Config{
		TrustDomain: cfg.TrustDomain,
		Store:       ds,
		CA:          agentSigner{m, metrics},
		AgentTTL:    cfg.AgentTTL,
		Attestors:   nodeAttestors(attestors),
		Clock:       clk,
		Log:         log,
	})
	if err != nil {
		return nil, err
	}
	svids, err := svidapi.New(svidapi.Config{TrustDomain: cfg.TrustDomain, CA: svidSigner{caWithBundle{m, trust}, metrics}, Entries: cache, Store: ds, Log: log})
	if err != nil {
		return nil, err
	}
	// Watch-mode sync streams re-check their agent (ban, deletion) with the
	// middleware's rule.
	agentCheck, err := endpoints.NewAgentValidator(endpoints.AgentValidatorConfig{Nodes: ds, Cache: cache, Log: log.With("subsystem", "endpoints"), Clock: clk})
	if err != nil {
		return nil, err
	}
	entries := entryapi.New(entryapi.Config{Store: ds, Cache: cache, AgentValidator: agentCheck, TrustDomain: cfg.TrustDomain, Log: log, Clock: clk})
	fedLog := log.With("subsystem", "federation")
	fed, err := federation.NewManager(federation.ManagerConfig{
		TrustDomain:    cfg.TrustDomain,
		Store:          ds,
		Static:         staticRelationships(cfg),
		OnBundleChange: cache.BundleChanged,
		Metrics:        metrics,
		Clock:          clk,
		Log:            fedLog,
	})
	if err != nil {
		return nil, err
	}
	// A federated bundle set through the bundle API may be the bootstrap
	// bundle a refresher waits for: the cache tells it (bundleChanged).
	fedMgr = fed
	bundles := bundleapi.New(bundleapi.Config{Store: ds, TrustDomain: cfg.TrustDomain, Log: log})
	trustDomains := trustdomainapi.New(trustdomainapi.Config{Store: ds, Refresher: fed, Cache: bundleWrites{cache, fed}, TrustDomain: cfg.TrustDomain, Log: log})
	bundleEP, err := newBundleEndpoint(cfg, pre.bundleEndpoint, ownBundle, svid.Get, clk, fedLog.With("component", "bundle_endpoint"))
	if err != nil {
		return nil, err
	}

	ep, err := endpoints.New(endpoints.Config{
		TCPAddr:     pre.tcpAddr,
		SocketPath:  cfg.SocketPath,
		TrustDomain: cfg.TrustDomain,
		ServerSVID:  svid.Get,
		// Agents' SVIDs may come from any server's CA.
		Bundle:    trust.X509Authorities,
		Nodes:     ds,
		Entries:   cache,
		RateLimit: ratelimit.Config{Attestation: cfg.RateLimit.Attestation, Signing: cfg.RateLimit.Signing},
		Log:       log.With("subsystem", "endpoints"),
		Clock:     clk,
		Metrics:   metrics,
		Audit:     auditLog(cfg, log),
		Register: func(g *grpc.Server) {
			agents.Register(g)
			svids.Register(g)
			entries.Register(g)
			bundles.Register(g)
			trustDomains.Register(g)
		},
	})
	if err != nil {
		return nil, err
	}
	metrics.SetAttestors(slices.Collect(maps.Keys(attestors)))
	metrics.ObserveState(reg, serverState(cache, m))
	metrics.ObserveChangeListener(reg, func() (bool, bool) {
		if l, ok := ds.(changeListener); ok && !opts.NoChangeListener {
			return l.ChangeListener()
		}
		return false, false
	})
	var exporter *telemetry.Exporter
	if p := cfg.Telemetry.Prometheus; p != nil {
		exporter, err = telemetry.NewExporter(telemetry.ExporterConfig{
			Addr: net.JoinHostPort(p.Host, strconv.Itoa(p.Port)), Registry: reg, Log: log.With("subsystem", "telemetry"),
		})
		if err != nil {
			return nil, err
		}
	}
	var profiler *profiling.Profiler
	if p := cfg.Profiling; p.Enabled {
		profiler, err = profiling.New(profiling.Config{
			Listen: p.Port > 0, Port: p.Port, Freq: p.Freq, Names: p.Names,
			Dir: opts.ProfilingDir, Tag: "server", Clock: clk, Log: log.With("subsystem", "profiling"),
		})
		if err != nil {
			return nil, err
		}
	}
	pruner := prune.New(prune.Config{Store: ds, Clock: clk, Log: log.With("subsystem", "prune")})
	srv := &Server{cfg: cfg, log: log, clk: clk, ds: ds, ca: m, cache: cache, trust: trust, svid: svid, ep: ep, metrics: reg, exporter: exporter, fed: fed, bundleEP: bundleEP, pruner: pruner, profiler: profiler, lock: lock}
	srv.noListen = opts.NoChangeListener
	srv.upstream, _ = pre.upstream.(io.Closer)
	return srv, nil
}

// nodeAttestors hands the catalog's node attestors to the agent API.
func nodeAttestors(in map[string]servercatalog.NodeAttestor) map[string]agentapi.NodeAttestor {
	out := make(map[string]agentapi.NodeAttestor, len(in))
	for name, a := range in {
		out[name] = a
	}
	return out
}

// Metrics is the server's metric registry.
func (s *Server) Metrics() *telemetry.Registry { return s.metrics }

// MetricsAddr is the bound address of the telemetry Prometheus exporter
// (nil when not configured or not yet listening).
func (s *Server) MetricsAddr() net.Addr {
	if s.exporter == nil {
		return nil
	}
	return s.exporter.Addr()
}

// ProfilingAddr is the bound address of profiling_port's pprof listener
// (nil when not configured or not yet listening).
func (s *Server) ProfilingAddr() net.Addr {
	if s.profiler == nil {
		return nil
	}
	return s.profiler.Addr()
}

// Ready is closed once both listeners accept connections.
func (s *Server) Ready() <-chan struct{} { return s.ep.Ready() }

// TCPAddr is the agent endpoint's address (after Ready).
func (s *Server) TCPAddr() net.Addr { return s.ep.TCPAddr() }

// BundleEndpoint is the federation bundle endpoint (nil without one).
func (s *Server) BundleEndpoint() *federation.Endpoint {
	if s.bundleEP == nil {
		return nil
	}
	return s.bundleEP.ep
}

// Federation is the federated bundles' refresher: each relationship's
// status (for metrics).
func (s *Server) Federation() *federation.Manager { return s.fed }

// Run serves until ctx ends, then shuts everything down and closes the
// datastore.
func (s *Server) Run(ctx context.Context) error {
	defer s.lock.Release()
	defer s.ds.Close()
	if s.upstream != nil {
		defer s.upstream.Close()
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.ca.Run(ctx) })
	g.Go(func() error { return s.cache.Run(ctx) })
	g.Go(func() error { return s.trust.Run(ctx) })
	if feed, ok := s.ds.(changeFeed); ok && !s.noListen {
		g.Go(func() error { return feed.Listen(ctx) })
	}
	g.Go(func() error { return s.svid.Run(ctx) })
	g.Go(func() error { return s.ep.Run(ctx) })
	g.Go(func() error { return s.pruner.Run(ctx) })
	if s.exporter != nil {
		g.Go(func() error { return s.exporter.Run(ctx) })
	}
	if s.profiler != nil {
		g.Go(func() error { return s.profiler.Run(ctx) })
	}
	g.Go(func() error { return s.fed.Run(ctx) })
	if s.bundleEP != nil {
		g.Go(func() error { return s.bundleEP.ep.Run(ctx) })
		if sc := s.bundleEP.servingCert; sc != nil {
			g.Go(func() error { return sc.Run(ctx) })
		}
	}
	if hc := s.cfg.HealthChecks; hc.ListenerEnabled {
		g.Go(func() error { return s.serveHealth(ctx, hc) })
	}
	s.log.Info("Starting sigil-server", "trust_domain", s.cfg.TrustDomain.Name(), "bind", net.JoinHostPort(s.cfg.BindAddress, strconv.Itoa(s.cfg.BindPort)), "socket_path", s.cfg.SocketPath)
	return g.Wait()
}

// Close releases the datastore of a Server whose Run was never called.
func (s *Server) Close() error {
	defer s.lock.Release()
	if s.upstream != nil {
		_ = s.upstream.Close()
	}
	return s.ds.Close()
}

// serveHealth is SPIRE's health_checks listener: live while running, ready
// once both API listeners accept connections.
func (s *Server) serveHealth(ctx context.Context, hc config.HealthChecks) error {
	return healthcheck.Serve(ctx, healthcheck.Config{
		Addr:      net.JoinHostPort(hc.BindAddress, strconv.Itoa(hc.BindPort)),
		LivePath:  hc.LivePath,
		ReadyPath: hc.ReadyPath,
		Ready: func() (bool, string) {
			select {
			case <-s.ep.Ready():
				return true, "ok"
			default:
				return false, "not ready: API listeners starting"
			}
		},
	})
}
