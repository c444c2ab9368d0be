package fleet

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"maps"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/bench/internal/stack"
	"github.com/sigil-spiffe/sigil/internal/adminclient"
	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/agent/client"
)

// Config is one fleet run.
type Config struct {
	// Addr is the server's agent endpoint (host:port); Admin its admin
	// API (join tokens, entries); Bundle its X.509 authorities.
	Addr        string
	TrustDomain spiffeid.TrustDomain
	Admin       *adminclient.Client
	Bundle      []*x509.Certificate
	// MetricsURL, when set, is the server's Prometheus endpoint: its Go
	// heap and stack in use and goroutines are read after setup and once
	// every agent synced.
	MetricsURL string
	// ServerPid is the server process, for its CPU time and RSS (0: not
	// measured).
	ServerPid int

	Agents int
	// EntriesPerAgent entries are parented to each agent's ID.
	EntriesPerAgent int
	// SharedEntries entries are authorized to every agent, through one node
	// alias per agent (spiffe_id:<agent ID> -> spiffe://<td>/fleet/shared).
	SharedEntries int
	// Concurrency bounds the agents attesting, doing their first sync or
	// renewing at once (default 256); every synced agent keeps its watch
	// stream open.
	Concurrency int

	// Churn is entry operations per second (create, update, delete in
	// turn) for ChurnFor once every agent is synced; each is timed from
	// the admin call to the round that shows it to its agent.
	Churn    float64
	ChurnFor time.Duration
	// Renew renews every agent's SVID (RenewAgent, a new connection) and
	// re-signs every entry SVID once, after the churn.
	Renew bool
	// Restart, when set, restarts the server once every agent has synced
	// (and after the churn and renewal): the reconnect storm. It returns
	// the new server's process ID. The run then waits until every agent
	// has a round on a new stream, and probes the admin API meanwhile.
	Restart func() (pid int, err error)
	storm   bool // TestFleet: set Restart
	// PollInterval is the sync interval against a server that does not
	// push (SPIRE; its agent's default is 5 s).
	PollInterval time.Duration
	// KeyPerAgent makes each agent sign every CSR of a round with one key
	// (a real agent makes a key per entry): the server's work is the same
	// (a CSR to verify, an SVID to sign per entry), the simulator's, which
	// shares the machine, is a fraction.
	KeyPerAgent bool
	// DialOptions are added to every agent's connection.
	DialOptions []grpc.DialOption
	// AfterSync, when set, runs once every agent has synced, its watch
	// stream open (e.g. to write a heap profile of an in-process server).
	AfterSync func()
	// Progress, when set, receives a line per phase.
	Progress func(format string, args ...any)
}

// Report is what a run measured.
type Report struct {
	Agents, Entries     int
	Setup, Attest, Sync time.Duration
	Renew               time.Duration
	// Server CPU time per phase; SimCPU is the simulator's own over
	// attestation and sync (key generation, CSRs, TLS, parsing).
	SetupCPU, AttestCPU, SyncCPU, ChurnCPU, RenewCPU time.Duration
	SimCPU                                           time.Duration
	// Server RSS: peak over the run (VmHWM), after setup, after every
	// agent synced (all streams open).
	PeakRSS, RSSBefore, RSSSetup, RSSSynced int64
	// The server's Go runtime (MetricsURL) after setup and all synced.
	GoSetup, GoSynced goStats
	// Per-agent latencies: attestation (token to SVID) and first sync
	// (stream open to every SVID signed).
	AttestLat, SyncLat stack.Latencies
	// Entry -> agent: churn operation start to the round that shows it;
	// EntrySVID: create/update to the new SVID signed.
	EntryLat, EntrySVID stack.Latencies
	ChurnOps, ChurnLost int
	// Storm: restart (stop to ready) and recovery (stop to the last agent
	// back on a watch stream); per-agent recovery; server CPU from ready
	// to recovered; the slowest admin API probe and failed probes.
	StormRestart, StormRecovery time.Duration
	StormLat                    stack.Latencies
	StormCPU                    time.Duration
	StormAdminMax               time.Duration
	StormAdminFailed            int
	StormNotBack                int
	Watch                       bool // the server pushed (watch mode)
	KeyPerAgent                 bool
	Retries                     int64
	RetryReasons                map[string]int
	Errors                      map[string]int
	// Load average (1 min) before and after.
	LoadBefore, LoadAfter string
}

// agent is one simulated agent.
type agent struct {
	idx   int
	id    spiffeid.ID
	token string

	mu      sync.Mutex
	c       *client.Client
	gen     int                     // bumped on every new connection
	entries map[string]*cache.Entry // last round, by entry ID
	signed  map[string]int64        // entry ID -> revision of its SVID
	pending []*expect
	streams int           // watch streams that delivered a round (or polls)
	synced  chan struct{} // closed after the first complete sync
	syncErr error
	polling bool
	pushed  bool
}

// expect is one churn operation waiting for its agent to see it.
type expect struct {
	t0    time.Time
	match func(*agent) bool
	svid  bool // also time the SVID (create, update)
	seen  bool
}

type sim struct {
	cfg    Config
	agents []*agent
	rep    *Report

	mu      sync.Mutex
	errs    map[string]int
	retries map[string]int
	retry   atomic.Int64
	lat     sync.Mutex
	churnN  atomic.Int64
}

func (s *sim) fail(kind string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errs[kind+": "+firstLine(err)]++
}

// retried counts a failure a real agent retries, by kind and message
// (addresses cut off).
func (s *sim) retried(kind string, err error) {
	s.retry.Add(1)
	m := firstLine(err)
	if i := strings.Index(m, "127.0.0.1:"); i >= 0 {
		m = m[:i]
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.retries[kind+": "+m]++
}

func firstLine(err error) string {
	m := err.Error()
	if st, ok := status.FromError(errors.Unwrap(err)); ok {
		m = st.Code().String() + " " + st.Message()
	}
	if i := strings.IndexByte(m, '\n'); i >= 0 {
		m = m[:i]
	}
	if len(m) > 120 {
		m = m[:120]
	}
	return m
}

// retryable reports errors a real agent retries after a backoff: the
// server shedding load or not reachable.
func retryable(err error) bool {
	switch status.Code(errors.Unwrap(err)) {
	case codes.ResourceExhausted, codes.Unavailable:
		return true
	}
	c := status.Code(err)
	return c == codes.ResourceExhausted || c == codes.Unavailable
}

// backoff sleeps a jittered exponential delay for attempt (0-based), as
// sigil-agent's manager does: 200 ms doubling to 30 s, each delay drawn
// from [d/2, d].
func backoff(ctx context.Context, attempt int) {
	d := min(200*time.Millisecond<<min(attempt, 8), 30*time.Second)
	d = d/2 + mrand.N(d/2+1)
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// withRetry runs f until it succeeds, fails with an error a real agent
// does not retry, or 20 attempts.
func (s *sim) withRetry(ctx context.Context, f func() error) error {
	for attempt := 0; ; attempt++ {
		err := f()
		if err == nil || !retryable(err) || attempt >= 20 || ctx.Err() != nil {
			return err
		}
		s.retried("call", err)
		backoff(ctx, attempt)
	}
}

// Run runs the fleet until every phase is done; the agents' connections
// are closed when it returns.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 256
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 5 * time.Second
	}
	if cfg.Progress == nil {
		cfg.Progress = func(string, ...any) {}
	}
	s := &sim{cfg: cfg, errs: map[string]int{}, retries: map[string]int{}, rep: &Report{Agents: cfg.Agents, KeyPerAgent: cfg.KeyPerAgent}}
	rep := s.rep
	rep.LoadBefore = stack.LoadAvg()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var peak atomic.Int64
	if cfg.ServerPid > 0 {
		rep.RSSBefore = s.rss()
		sampleCtx, stop := context.WithCancel(ctx)
		defer stop()
		go func() {
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			for {
				if r := s.rss(); r > peak.Load() {
					peak.Store(r)
				}
				select {
				case <-sampleCtx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	defer func() {
		cancel() // first: the watch loops end quietly
		for _, a := range s.agents {
			a.mu.Lock()
			if a.c != nil {
				_ = a.c.Close()
			}
			a.mu.Unlock()
		}
	}()

	defer func() { // before the connections close
		rep.Retries = s.retry.Load()
		s.mu.Lock()
		rep.Errors = maps.Clone(s.errs)
		rep.RetryReasons = maps.Clone(s.retries)
		s.mu.Unlock()
		rep.LoadAfter = stack.LoadAvg()
	}()

	phase := func(name string, cpu *time.Duration, wall *time.Duration, f func() error) error {
		cpu0 := s.serverCPU()
		t0 := time.Now()
		err := f()
		if wall != nil {
			*wall = time.Since(t0)
		}
		if cpu != nil {
			*cpu = s.serverCPU() - cpu0
		}
		cfg.Progress("%s: %v (server CPU %v)", name, time.Since(t0).Round(time.Millisecond), (s.serverCPU() - cpu0).Round(10*time.Millisecond))
		return err
	}

	if err := phase("setup", &rep.SetupCPU, &rep.Setup, func() error { return s.setup(ctx) }); err != nil {
		return rep, err
	}
	rep.RSSSetup = s.rss()
	rep.GoSetup = s.goStats()
	sim0 := stack.CPUTime()
	if err := phase("attestation", &rep.AttestCPU, &rep.Attest, func() error { return s.attestAll(ctx) }); err != nil {
		return rep, err
	}
	if err := phase("sync", &rep.SyncCPU, &rep.Sync, func() error { return s.syncAll(ctx) }); err != nil {
		return rep, err
	}
	rep.SimCPU = stack.CPUTime() - sim0
	rep.RSSSynced = s.rss()
	rep.GoSynced = s.goStats()
	if cfg.AfterSync != nil {
		cfg.AfterSync()
	}
	for _, a := range s.agents {
		a.mu.Lock()
		rep.Watch = rep.Watch || a.pushed
		a.mu.Unlock()
	}
	if cfg.Churn > 0 && cfg.ChurnFor > 0 {
		_ = phase("churn", &rep.ChurnCPU, nil, func() error { return s.churn(ctx) })
	}
	if cfg.Renew {
		if err := phase("renewal", &rep.RenewCPU, &rep.Renew, func() error { return s.renewAll(ctx) }); err != nil {
			return rep, err
		}
	}
	if cfg.ServerPid > 0 {
		rep.PeakRSS = max(s.hwm(), peak.Load())
	}
	if cfg.Restart != nil {
		if err := s.storm(ctx); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

func (s *sim) serverCPU() time.Duration {
	if s.cfg.ServerPid == 0 {
		return 0
	}
	d, _ := stack.ProcessCPUTime(s.cfg.ServerPid)
	return d
}

func (s *sim) rss() int64 {
	if s.cfg.ServerPid == 0 {
		return 0
	}
	m, _ := stack.ProcessMemory(s.cfg.ServerPid)
	return m.RSS
}

func (s *sim) hwm() int64 {
	m, _ := stack.ProcessMemory(s.cfg.ServerPid)
	return m.PeakRSS
}

// goStats is what the server's Go runtime reports.
type goStats struct {
	HeapInuse, StackInuse, Goroutines float64
}

// goStats scrapes go_memstats_heap_inuse_bytes,
// go_memstats_stack_inuse_bytes and go_goroutines (zero without
// MetricsURL or on failure).
func (s *sim) goStats() goStats {
	var g goStats
	if s.cfg.MetricsURL == "" {
		return g
	}
	resp, err := http.Get(s.cfg.MetricsURL)
	if err != nil {
		return g
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return g
	}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "go_memstats_heap_inuse_bytes":
			g.HeapInuse = v
		case "go_memstats_stack_inuse_bytes":
			g.StackInuse = v
		case "go_goroutines":
			g.Goroutines = v
		}
	}
	return g
}

// parallel runs f for every agent, cfg.Concurrency at once.
func (s *sim) parallel(ctx context.Context, f func(*agent)) {
	ch := make(chan *agent)
	var wg sync.WaitGroup
	for range min(s.cfg.Concurrency, len(s.agents)) {
		wg.Go(func() {
			for a := range ch {
				f(a)
			}
		})
	}
	for _, a := range s.agents {
		select {
		case ch <- a:
		case <-ctx.Done():
		}
	}
	close(ch)
	wg.Wait()
}

// setup creates a join token per agent and the entries.
func (s *sim) setup(ctx context.Context) error {
	td := s.cfg.TrustDomain
	s.agents = make([]*agent, s.cfg.Agents)
	for i := range s.agents {
		s.agents[i] = &agent{idx: i, synced: make(chan struct{}), signed: map[string]int64{}}
	}
	// Tokens: 8 callers (the admin API is a unix socket; this is not
	// what is measured, but it is part of setup's time).
	var firstErr error
	var errMu sync.Mutex
	setErr := func(err error) {
		errMu.Lock()
		defer errMu.Unlock()
		if firstErr == nil {
			firstErr = err
		}
	}
	run := func(n, workers int, f func(i int) error) {
		ch := make(chan int)
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for i := range ch {
					if err := f(i); err != nil {
						setErr(err)
					}
				}
			})
		}
		for i := range n {
			ch <- i
		}
		close(ch)
		wg.Wait()
	}
	run(len(s.agents), 8, func(i int) error {
		tok, err := s.cfg.Admin.CreateJoinToken(ctx, spiffeid.ID{}, 2*time.Hour)
		if err != nil {
			return err
		}
		s.agents[i].token = tok
		s.agents[i].id = s.cfg.Admin.JoinTokenAgentID(tok)
		return nil
	})
	if firstErr != nil {
		return fmt.Errorf("setup: join tokens: %w", firstErr)
	}
	var entries []*types.Entry
	shared := spiffeid.RequireFromPath(td, "/fleet/shared")
	serverID := spiffeid.RequireFromPath(td, "/spire/server")
	for i := range s.cfg.SharedEntries {
		entries = append(entries, &types.Entry{
			SpiffeId:  adminclient.ProtoID(spiffeid.RequireFromSegments(td, "fleet", "shared", fmt.Sprint(i))),
			ParentId:  adminclient.ProtoID(shared),
			Selectors: []*types.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", 20000+i)}},
		})
	}
	for _, a := range s.agents {
		if s.cfg.SharedEntries > 0 {
			entries = append(entries, &types.Entry{
				SpiffeId:  adminclient.ProtoID(shared),
				ParentId:  adminclient.ProtoID(serverID),
				Selectors: []*types.Selector{{Type: "spiffe_id", Value: a.id.String()}},
			})
		}
		for j := range s.cfg.EntriesPerAgent {
			entries = append(entries, &types.Entry{
				SpiffeId:  adminclient.ProtoID(spiffeid.RequireFromSegments(td, "fleet", "agent", fmt.Sprint(a.idx), "workload", fmt.Sprint(j))),
				ParentId:  adminclient.ProtoID(a.id),
				Selectors: []*types.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", 10000+j)}},
			})
		}
	}
	s.rep.Entries = s.cfg.SharedEntries + s.cfg.Agents*s.cfg.EntriesPerAgent
	const batch = 100
	run((len(entries)+batch-1)/batch, 4, func(i int) error {
		_, err := s.cfg.Admin.CreateEntries(ctx, entries[i*batch:min((i+1)*batch, len(entries))]...)
		return err
	})
	if firstErr != nil {
		return fmt.Errorf("setup: entries: %w", firstErr)
	}
	return nil
}

func (s *sim) dial(svid *x509svid.SVID) (*client.Client, error) {
	bundle := s.cfg.Bundle
	cfg := client.Config{
		Addr:        s.cfg.Addr,
		TrustDomain: s.cfg.TrustDomain,
		Bundle:      func() []*x509.Certificate { return bundle },
		DialOptions: s.cfg.DialOptions,
	}
	if svid != nil {
		cfg.SVID = func() *x509svid.SVID { return svid }
	}
	return client.Dial(cfg)
}

// attestAll attests every agent with its join token, each on its own
// connection (as an agent does), then dials its mTLS connection.
func (s *sim) attestAll(ctx context.Context) error {
	var failed atomic.Int64
	s.parallel(ctx, func(a *agent) {
		t0 := time.Now()
		if err := s.attest(ctx, a); err != nil {
			failed.Add(1)
			s.fail("attest", err)
			return
		}
		s.lat.Lock()
		s.rep.AttestLat.Add(time.Since(t0))
		s.lat.Unlock()
	})
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d of %d agents failed to attest", n, len(s.agents))
	}
	return nil
}

func (s *sim) attest(ctx context.Context, a *agent) error {
	key, csr, err := stack.NewCSR()
	if err != nil {
		return err
	}
	boot, err := s.dial(nil)
	if err != nil {
		return err
	}
	defer boot.Close()
	var chain []*x509.Certificate
	err = s.withRetry(ctx, func() error {
		var err error
		chain, err = boot.AttestJoinToken(ctx, a.token, csr)
		return err
	})
	if err != nil {
		return err
	}
	c, err := s.dial(&x509svid.SVID{ID: a.id, Certificates: chain, PrivateKey: key})
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.c = c
	a.gen++
	a.mu.Unlock()
	return nil
}

// syncAll starts every agent's watch loop, cfg.Concurrency at a time, and
// waits until each has synced once (every entry's SVID signed).
func (s *sim) syncAll(ctx context.Context) error {
	var failed atomic.Int64
	s.parallel(ctx, func(a *agent) {
		t0 := time.Now()
		go s.watchLoop(ctx, a)
		select {
		case <-a.synced:
		case <-ctx.Done():
			return
		}
		a.mu.Lock()
		err := a.syncErr
		a.mu.Unlock()
		if err != nil {
			failed.Add(1)
			return
		}
		s.lat.Lock()
		s.rep.SyncLat.Add(time.Since(t0))
		s.lat.Unlock()
	})
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d of %d agents failed to sync", n, len(s.agents))
	}
	return ctx.Err()
}

var errPoll = errors.New("server does not push: poll")

// watchLoop keeps the agent's entries current until ctx ends: a watch
// stream, reopened after a failure with a jittered backoff (at once after
// a renewal replaced the connection), or polled single rounds against a
// server that does not push.
func (s *sim) watchLoop(ctx context.Context, a *agent) {
	for attempt := 0; ctx.Err() == nil; {
		a.mu.Lock()
		c, gen, polling := a.c, a.gen, a.polling
		a.mu.Unlock()
		var err error
		if polling {
			err = s.poll(ctx, a, c)
		} else {
			first := true
			err = c.WatchEntries(ctx, a.known, func(r *client.Round) error {
				attempt = 0
				if first {
					first = false
					a.mu.Lock()
					a.streams++
					a.mu.Unlock()
				}
				if err := s.onRound(ctx, a, r); err != nil {
					return err
				}
				if !r.Pushed {
					return errPoll
				}
				return nil
			})
		}
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errPoll) || errors.Is(err, client.ErrWatchUnsupported) {
			a.mu.Lock()
			a.polling = true
			a.mu.Unlock()
			continue
		}
		a.mu.Lock()
		renewed := a.gen != gen
		a.mu.Unlock()
		if renewed {
			continue
		}
		if err != nil {
			if retryable(err) {
				s.retried("watch", err)
			} else {
				s.fail("watch", err)
			}
		}
		backoff(ctx, attempt)
		attempt++
	}
}

// poll syncs with single rounds every PollInterval until the connection is
// replaced or a round fails.
func (s *sim) poll(ctx context.Context, a *agent, c *client.Client) error {
	t := time.NewTicker(s.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		a.mu.Lock()
		same := a.c == c
		a.mu.Unlock()
		if !same {
			return nil
		}
		r, err := c.SyncEntries(ctx, a.known)
		if err != nil {
			return err
		}
		a.mu.Lock()
		a.streams++
		a.mu.Unlock()
		if err := s.onRound(ctx, a, r); err != nil {
			return err
		}
	}
}

func (a *agent) known(id string) (*cache.Entry, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.entries[id]
	return e, ok
}

// onRound takes a complete authorized set: it signs an SVID for every new
// or changed entry (a key and CSR each, in batches), marks the agent synced
// after its first round, and times the churn operations the round shows.
func (s *sim) onRound(ctx context.Context, a *agent, r *client.Round) error {
	arrived := time.Now()
	m := make(map[string]*cache.Entry, len(r.Entries))
	for _, e := range r.Entries {
		m[e.ID] = e
	}
	a.mu.Lock()
	a.entries = m
	a.pushed = a.pushed || r.Pushed
	for id := range a.signed {
		if _, ok := m[id]; !ok {
			delete(a.signed, id)
		}
	}
	var need []*cache.Entry
	for _, e := range r.Entries {
		if rev, ok := a.signed[e.ID]; !ok || rev != e.RevisionNumber {
			need = append(need, e)
		}
	}
	var svidWait []*expect
	for _, x := range a.pending {
		if !x.seen && x.match(a) {
			x.seen = true
			s.lat.Lock()
			s.rep.EntryLat.Add(arrived.Sub(x.t0))
			s.lat.Unlock()
			if x.svid {
				svidWait = append(svidWait, x)
			}
		}
	}
	a.pending = slices.DeleteFunc(a.pending, func(x *expect) bool { return x.seen })
	c := a.c
	a.mu.Unlock()

	err := s.sign(ctx, a, c, need)
	if err == nil {
		now := time.Now()
		s.lat.Lock()
		for _, x := range svidWait {
			s.rep.EntrySVID.Add(now.Sub(x.t0))
		}
		s.lat.Unlock()
	}
	select {
	case <-a.synced:
	default:
		a.mu.Lock()
		a.syncErr = err
		a.mu.Unlock()
		close(a.synced)
	}
	if err != nil {
		s.fail("svid", err)
	}
	return nil
}

// sign gets an SVID for each entry, with a new key each (as an agent).
func (s *sim) sign(ctx context.Context, a *agent, c *client.Client, entries []*cache.Entry) error {
	if len(entries) == 0 {
		return nil
	}
	reqs := make([]client.X509SVIDRequest, len(entries))
	var csr []byte
	for i, e := range entries {
		if csr == nil || !s.cfg.KeyPerAgent {
			var err error
			if _, csr, err = stack.NewCSR(); err != nil {
				return err
			}
		}
		reqs[i] = client.X509SVIDRequest{EntryID: e.ID, CSR: csr}
	}
	var res []client.X509SVIDResult
	err := s.withRetry(ctx, func() error {
		var err error
		res, err = c.BatchNewX509SVID(ctx, reqs)
		return err
	})
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, r := range res {
		switch {
		case r.Err == nil:
			a.signed[r.EntryID] = entries[i].RevisionNumber
		case status.Code(r.Err) == codes.NotFound:
			// Deleted since the round (churn): the next round drops it.
		default:
			return fmt.Errorf("entry SVID: %w", r.Err)
		}
	}
	return nil
}

// churn runs entry creates, updates and deletes in turn at cfg.Churn per
// second for cfg.ChurnFor, each against a random agent's entries, and
// waits (at most 30 s) until every agent saw its change.
func (s *sim) churn(ctx context.Context) error {
	// made is an entry the churn created. Each operation waits for the
	// previous one on the same entry to be seen by its agent (settled):
	// an update or delete superseding a change not yet seen would leave
	// that change unobservable.
	type made struct {
		a    *agent
		id   string
		last *expect // the latest operation's expectation
	}
	settled := func(m *made) bool {
		m.a.mu.Lock()
		defer m.a.mu.Unlock()
		return m.last.seen
	}
	var (
		mu      sync.Mutex
		created []*made
		wg      sync.WaitGroup
		all     []*expect
	)
	td := s.cfg.TrustDomain
	interval := time.Duration(float64(time.Second) / s.cfg.Churn)
	t := time.NewTicker(interval)
	defer t.Stop()
	end := time.Now().Add(s.cfg.ChurnFor)
	expectOn := func(a *agent, x *expect) {
		a.mu.Lock()
		a.pending = append(a.pending, x)
		a.mu.Unlock()
		mu.Lock()
		all = append(all, x)
		mu.Unlock()
	}
	for op := 0; time.Now().Before(end); op++ {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		mu.Lock()
		var target *made
		kind := op % 3
		var ready []int // indexes of settled entries, oldest first
		if kind != 0 {
			for i, m := range created {
				if settled(m) {
					ready = append(ready, i)
				}
			}
		}
		switch {
		case kind == 0 || len(ready) == 0:
			kind = 0
		case kind == 1:
			target = created[ready[mrand.N(len(ready))]]
		case kind == 2:
			target = created[ready[0]]
			created = slices.Delete(created, ready[0], ready[0]+1)
		}
		mu.Unlock()
		n := s.churnN.Add(1)
		wg.Go(func() {
			switch kind {
			case 0: // create
				a := s.agents[mrand.N(len(s.agents))]
				sid := spiffeid.RequireFromSegments(td, "fleet", "churn", fmt.Sprint(n))
				x := &expect{t0: time.Now(), svid: true, match: func(a *agent) bool {
					for _, e := range a.entries {
						if e.SPIFFEID == sid {
							return true
						}
					}
					return false
				}}
				expectOn(a, x)
				ids, err := s.cfg.Admin.CreateEntries(ctx, &types.Entry{
					SpiffeId: adminclient.ProtoID(sid), ParentId: adminclient.ProtoID(a.id),
					Selectors: []*types.Selector{{Type: "unix", Value: "uid:30000"}},
				})
				if err != nil {
					s.fail("churn", err)
					return
				}
				mu.Lock()
				created = append(created, &made{a: a, id: ids[0], last: x})
				mu.Unlock()
			case 1: // update: a new selector value, so a new revision
				val := fmt.Sprintf("uid:%d", 40000+n)
				x := &expect{t0: time.Now(), svid: true, match: func(a *agent) bool {
					e := a.entries[target.id]
					return e != nil && len(e.Selectors) == 1 && e.Selectors[0].Type+":"+e.Selectors[0].Value == "unix:"+val
				}}
				mu.Lock()
				target.last = x
				mu.Unlock()
				expectOn(target.a, x)
				_, err := s.cfg.Admin.Entry.BatchUpdateEntry(ctx, &entryv1.BatchUpdateEntryRequest{
					Entries:   []*types.Entry{{Id: target.id, Selectors: []*types.Selector{{Type: "unix", Value: val}}}},
					InputMask: &types.EntryMask{Selectors: true},
				})
				if err != nil {
					s.fail("churn", err)
				}
			case 2: // delete
				x := &expect{t0: time.Now(), match: func(a *agent) bool { return a.entries[target.id] == nil }}
				expectOn(target.a, x)
				if err := s.cfg.Admin.DeleteEntries(ctx, target.id); err != nil {
					s.fail("churn", err)
				}
			}
		})
	}
	wg.Wait()
	// Wait for the last changes to arrive.
	deadline := time.Now().Add(30 * time.Second)
	for {
		lost := 0
		for _, a := range s.agents {
			a.mu.Lock()
			lost += len(a.pending)
			a.mu.Unlock()
		}
		if lost == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			mu.Lock()
			s.rep.ChurnOps = len(all)
			mu.Unlock()
			s.rep.ChurnLost = lost
			// Changes not seen by now are lost for the latencies: seen
			// later, they would only measure the wait above.
			for _, a := range s.agents {
				a.mu.Lock()
				a.pending = nil
				a.mu.Unlock()
			}
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// renewAll renews every agent's SVID (RenewAgent, then a new connection
// with it, whose watch stream resumes from the known entries) and re-signs
// every entry SVID, as at half-life.
func (s *sim) renewAll(ctx context.Context) error {
	var failed atomic.Int64
	s.parallel(ctx, func(a *agent) {
		if err := s.renew(ctx, a); err != nil {
			failed.Add(1)
			s.fail("renew", err)
		}
	})
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d of %d agents failed to renew", n, len(s.agents))
	}
	return nil
}

func (s *sim) renew(ctx context.Context, a *agent) error {
	key, csr, err := stack.NewCSR()
	if err != nil {
		return err
	}
	a.mu.Lock()
	old := a.c
	a.mu.Unlock()
	var chain []*x509.Certificate
	err = s.withRetry(ctx, func() error {
		var err error
		chain, err = old.RenewAgent(ctx, csr)
		return err
	})
	if err != nil {
		return err
	}
	c, err := s.dial(&x509svid.SVID{ID: a.id, Certificates: chain, PrivateKey: key})
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.c = c
	a.gen++
	entries := make([]*cache.Entry, 0, len(a.entries))
	for _, e := range a.entries {
		entries = append(entries, e)
	}
	a.mu.Unlock()
	_ = old.Close()
	return s.sign(ctx, a, c, entries)
}

// storm restarts the server with every agent connected and waits (at most
// 10 minutes) until each has had a round on a new stream, probing the
// admin API every 200 ms meanwhile.
func (s *sim) storm(ctx context.Context) error {
	before := make([]int, len(s.agents))
	for i, a := range s.agents {
		a.mu.Lock()
		before[i] = a.streams
		a.mu.Unlock()
	}
	type probe struct {
		at  time.Time
		d   time.Duration
		err error
	}
	var probes []probe // written by the prober until probeDone
	probeCtx, stopProbe := context.WithCancel(ctx)
	probeDone := make(chan struct{})
	t0 := time.Now()
	go func() {
		defer close(probeDone)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-probeCtx.Done():
				return
			case <-t.C:
			}
			c, cancel := context.WithTimeout(probeCtx, 10*time.Second)
			p0 := time.Now()
			// WaitForReady: the admin client's own reconnection after the
			// restart is not a failure of the server.
			_, err := s.cfg.Admin.Entry.CountEntries(c, &entryv1.CountEntriesRequest{}, grpc.WaitForReady(true))
			cancel()
			if probeCtx.Err() != nil {
				return
			}
			probes = append(probes, probe{p0, time.Since(p0), err})
		}
	}()
	pid, err := s.cfg.Restart()
	if err != nil {
		stopProbe()
		<-probeDone
		return fmt.Errorf("restart: %w", err)
	}
	ready := time.Now()
	s.mu.Lock()
	s.rep.StormRestart = ready.Sub(t0)
	s.mu.Unlock()
	s.cfg.ServerPid = pid
	cpu0 := s.serverCPU()
	back := make([]bool, len(s.agents))
	left := len(s.agents)
	deadline := time.Now().Add(10 * time.Minute)
	for left > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
		now := time.Now()
		for i, a := range s.agents {
			if back[i] {
				continue
			}
			a.mu.Lock()
			n := a.streams
			a.mu.Unlock()
			if n > before[i] {
				back[i] = true
				left--
				s.rep.StormLat.Add(now.Sub(t0))
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.rep.StormRecovery = time.Since(t0)
	s.rep.StormCPU = s.serverCPU() - cpu0
	s.rep.StormNotBack = left
	stopProbe()
	<-probeDone
	// Probes while the server was down fail; count those sent once it
	// was ready again.
	for _, p := range probes {
		if p.at.Before(ready) {
			continue
		}
		if p.err != nil {
			s.rep.StormAdminFailed++
		}
		s.rep.StormAdminMax = max(s.rep.StormAdminMax, p.d)
	}
	s.cfg.Progress("storm: restart %v, all back %v, not back %d", s.rep.StormRestart.Round(time.Millisecond), s.rep.StormRecovery.Round(time.Millisecond), left)
	return nil
}

// Markdown renders the report as a table row set.
func (r *Report) Markdown() string {
	var b strings.Builder
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }
	sec := func(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }
	mb := func(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
	fmt.Fprintf(&b, "agents %d, entries %d (watch mode: %v, key per agent: %v), load %s -> %s\n", r.Agents, r.Entries, r.Watch, r.KeyPerAgent, r.LoadBefore, r.LoadAfter)
	fmt.Fprintf(&b, "setup %s (server CPU %s)\n", sec(r.Setup), sec(r.SetupCPU))
	fmt.Fprintf(&b, "attestation %s (server CPU %s; per agent p50 %s p99 %s)\n", sec(r.Attest), sec(r.AttestCPU), ms(r.AttestLat.Percentile(50)), ms(r.AttestLat.Percentile(99)))
	fmt.Fprintf(&b, "sync %s (server CPU %s; per agent p50 %s p99 %s)\n", sec(r.Sync), sec(r.SyncCPU), ms(r.SyncLat.Percentile(50)), ms(r.SyncLat.Percentile(99)))
	fmt.Fprintf(&b, "attestation+sync %s; simulator CPU %s\n", sec(r.Attest+r.Sync), sec(r.SimCPU))
	if r.ChurnOps > 0 {
		fmt.Fprintf(&b, "churn %d ops (server CPU %s): entry->agent p50 %s p99 %s max %s; entry->SVID p50 %s p99 %s; not seen %d\n",
			r.ChurnOps, sec(r.ChurnCPU), ms(r.EntryLat.Percentile(50)), ms(r.EntryLat.Percentile(99)), ms(r.EntryLat.Percentile(100)),
			ms(r.EntrySVID.Percentile(50)), ms(r.EntrySVID.Percentile(99)), r.ChurnLost)
	}
	if r.Renew > 0 {
		fmt.Fprintf(&b, "renewal %s (server CPU %s)\n", sec(r.Renew), sec(r.RenewCPU))
	}
	if r.StormRecovery > 0 {
		fmt.Fprintf(&b, "storm: restart %s, every agent back %s (per agent p50 %s p99 %s; not back %d); server CPU from ready %s; admin API slowest %s, failed %d\n",
			sec(r.StormRestart), sec(r.StormRecovery), ms(r.StormLat.Percentile(50)), ms(r.StormLat.Percentile(99)), r.StormNotBack,
			sec(r.StormCPU), ms(r.StormAdminMax), r.StormAdminFailed)
	}
	if r.RSSBefore > 0 {
		fmt.Fprintf(&b, "server RSS: start %s, after setup %s, all synced %s, peak %s; per entry %.0f B, per connected agent %.1f kB\n",
			mb(r.RSSBefore), mb(r.RSSSetup), mb(r.RSSSynced), mb(r.PeakRSS),
			float64(r.RSSSetup-r.RSSBefore)/float64(max(r.Entries, 1)), float64(r.RSSSynced-r.RSSSetup)/1e3/float64(max(r.Agents, 1)))
	}
	if r.GoSynced.HeapInuse > 0 {
		n := float64(max(r.Agents, 1))
		fmt.Fprintf(&b, "server Go runtime, after setup -> all synced: heap in use %.1f -> %.1f MB, stacks %.1f -> %.1f MB, goroutines %.0f -> %.0f; per connected agent: heap %.1f kB, stack %.1f kB, %.1f goroutines\n",
			r.GoSetup.HeapInuse/1e6, r.GoSynced.HeapInuse/1e6, r.GoSetup.StackInuse/1e6, r.GoSynced.StackInuse/1e6, r.GoSetup.Goroutines, r.GoSynced.Goroutines,
			(r.GoSynced.HeapInuse-r.GoSetup.HeapInuse)/1e3/n, (r.GoSynced.StackInuse-r.GoSetup.StackInuse)/1e3/n, (r.GoSynced.Goroutines-r.GoSetup.Goroutines)/n)
	}
	fmt.Fprintf(&b, "retries %d, errors %d (retries first)\n", r.Retries, r.ErrorCount())
	for _, m := range []map[string]int{r.RetryReasons, r.Errors} {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, "  %d x %s\n", m[k], k)
		}
	}
	return b.String()
}

// ErrorCount is the number of failed operations.
func (r *Report) ErrorCount() int {
	n := 0
	for _, v := range r.Errors {
		n += v
	}
	return n
}
