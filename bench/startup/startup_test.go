package startup

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/bench/internal/stack"
	"github.com/sigil-spiffe/sigil/internal/adminclient"
	"github.com/sigil-spiffe/sigil/internal/agent/client"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/datastore/sqlstore"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// TestMain removes the server binary testutil builds.
func TestMain(m *testing.M) { os.Exit(testutil.Main(m)) }

var (
	flagEntries = flag.Int("startup.entries", 0, "TestStartup: registration entries in the datastore (0 skips TestStartup)")
	flagAgents  = flag.Int("startup.agents", 100000, "TestStartup: attested agents in the datastore (the entries are spread evenly over them)")
	flagNodeSel = flag.Int("startup.nodeselectors", 2, "TestStartup: selectors per attested agent")
	flagDir     = flag.String("startup.dir", "", "TestStartup: directory keeping the generated datastore between runs (\"\": a temporary one)")
	flagRuns    = flag.Int("startup.runs", 3, "TestStartup: timed restarts")
	flagBin     = flag.String("startup.bin", "", "TestStartup: sigil-server binary (\"\": built from this tree); several, comma-separated, are run in turn (A/B) each run")
	flagKeepLog = flag.String("startup.keeplog", "", "TestStartup: copy the server's log of the last run here")
)

// Agent and entry lifetimes long enough for a generated datastore to be
// reused for weeks (the probe agent's SVID must stay valid).
const (
	agentTTL = 30 * 24 * time.Hour
	caTTL    = 90 * 24 * time.Hour
)

// TestStartup generates (or reuses) a datastore at the scale its flags
// give and times restarts of sigil-server on it, e.g.
//
//	go test ./bench/startup -run 'TestStartup$' -timeout 120m -v -args \
//	    -startup.entries 1000000 -startup.agents 100000 -startup.dir /var/tmp/sigil-startup-1m
func TestStartup(t *testing.T) {
	if *flagEntries <= 0 {
		t.Skip("-startup.entries not set")
	}
	p := params{Entries: *flagEntries, Agents: *flagAgents, NodeSelectors: *flagNodeSel}
	dir := *flagDir
	if dir == "" {
		dir = t.TempDir()
	}
	bins := []string{""}
	if *flagBin != "" {
		bins = strings.Split(*flagBin, ",")
	}
	d := prepare(t, dir, p)
	results := make([][]result, len(bins))
	for run := range *flagRuns {
		for i, bin := range bins {
			r := d.measure(t, bin, run == *flagRuns-1 && i == len(bins)-1)
			results[i] = append(results[i], r)
			t.Logf("run %d %s: %s", run+1, binName(bin), r)
		}
	}
	for i, bin := range bins {
		t.Logf("median of %d (%s): %s", len(results[i]), binName(bin), median(results[i]))
	}
}

// TestStartupSmoke is the short CI run: 2,000 entries over 200 agents,
// generated and restarted once; every step must succeed.
func TestStartupSmoke(t *testing.T) {
	d := prepare(t, t.TempDir(), params{Entries: 2000, Agents: 200, NodeSelectors: 2})
	r := d.measure(t, "", false)
	t.Logf("%s", r)
	if r.Entries != d.probe.Entries || r.HWM == 0 {
		t.Errorf("probe agent synced %d entries (want %d), peak RSS %d", r.Entries, d.probe.Entries, r.HWM)
	}
}

func binName(bin string) string {
	if bin == "" {
		return "this tree"
	}
	return bin
}

// params is the generated datastore's shape, recorded next to it.
type params struct {
	Entries, Agents, NodeSelectors int
}

// probeFile records the probe agent: an agent attested while the datastore
// was generated, whose SVID and key are kept to sync after each restart.
type probeFile struct {
	ID       string
	Entries  int      // entries parented to it
	EntryIDs []string // their IDs (deleted when the probe is replaced)
	NotAfter time.Time
}

type dataset struct {
	dir   string
	p     params
	probe probeFile
	svid  *x509svid.SVID
}

func (d *dataset) dataDir() string { return filepath.Join(d.dir, "data") }

// serverConfig is the configuration of every server run on the dataset;
// the socket lives in a short directory (d.dir may be too long for a unix
// socket path).
func (d *dataset) serverConfig(t *testing.T) testutil.ServerConfig {
	return testutil.ServerConfig{
		TrustDomain: stack.TrustDomain.Name(), DataDir: d.dataDir(),
		SocketPath: filepath.Join(testutil.ShortTempDir(t), "api.sock"),
		AgentTTL:   agentTTL, CATTL: caTTL, LogLevel: "INFO",
	}
}

func newServer(t *testing.T, bin string, cfg testutil.ServerConfig) *testutil.Server {
	if bin == "" {
		return testutil.NewServer(t, cfg)
	}
	return testutil.NewServerBin(t, bin, cfg)
}

// prepare returns the dataset in dir, generating it when dir holds none of
// shape p, and replacing its probe agent when the probe's SVID is close to
// expiring.
func prepare(t *testing.T, dir string, p params) *dataset {
	t.Helper()
	if p.Agents < 1 || p.Entries < p.Agents {
		t.Fatalf("want at least one agent and one entry per agent, have %d agents and %d entries", p.Agents, p.Entries)
	}
	d := &dataset{dir: dir, p: p}
	var have params
	if b, err := os.ReadFile(filepath.Join(dir, "params.json")); err == nil && json.Unmarshal(b, &have) == nil && have == p {
		if err := d.loadProbe(); err != nil {
			t.Fatalf("dataset in %s: %v (remove the directory to generate it again)", dir, err)
		}
		if time.Until(d.probe.NotAfter) < 2*time.Hour {
			t.Logf("probe agent's SVID expires at %v: attesting a new one", d.probe.NotAfter)
			d.newProbe(t)
		}
		t.Logf("reusing the dataset in %s: %+v", dir, p)
		return d
	}
	t0 := time.Now()
	if err := os.RemoveAll(filepath.Join(dir, "params.json")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(d.dataDir()); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(d.dataDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	// The probe first, on the empty datastore (a quick start), then the
	// rest straight into the file.
	d.newProbe(t)
	d.bulk(t)
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "params.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Logf("generated the dataset in %s in %v: %+v", dir, time.Since(t0).Round(time.Second), p)
	return d
}

func (d *dataset) entriesPerAgent() int { return d.p.Entries / d.p.Agents }

func (d *dataset) loadProbe() error {
	b, err := os.ReadFile(filepath.Join(d.dir, "probe.json"))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &d.probe); err != nil {
		return err
	}
	d.svid, err = x509svid.Load(filepath.Join(d.dir, "probe-svid.pem"), filepath.Join(d.dir, "probe-key.pem"))
	return err
}

// newProbe starts the server (untimed), attests a probe agent with a join
// token, creates its entries through the admin API (deleting the previous
// probe's), and records its SVID and key.
func (d *dataset) newProbe(t *testing.T) {
	t.Helper()
	srv := newServer(t, "", d.serverConfig(t))
	srv.StartProcess(t)
	defer srv.Stop(t)
	if err := stack.WaitServing(srv, time.Hour, 5*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	admin := srv.Admin(t)
	ctx := context.Background()
	if len(d.probe.EntryIDs) > 0 {
		if err := admin.Client.DeleteEntries(ctx, d.probe.EntryIDs...); err != nil {
			t.Fatalf("deleting the old probe's entries: %v", err)
		}
	}
	bundle := admin.BundleCerts(t)
	tok := admin.CreateJoinToken(t, spiffeid.ID{})
	id := admin.JoinTokenAgentID(tok)
	svid, err := attest(ctx, srv.Addr(), bundle, id, tok)
	if err != nil {
		t.Fatal(err)
	}
	var entries []*types.Entry
	for j := range d.entriesPerAgent() {
		entries = append(entries, &types.Entry{
			SpiffeId:  adminclient.ProtoID(spiffeid.RequireFromSegments(stack.TrustDomain, "probe", "workload", fmt.Sprint(j))),
			ParentId:  adminclient.ProtoID(id),
			Selectors: []*types.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", 10000+j)}},
		})
	}
	ids := admin.CreateEntries(t, entries...)
	certs, key, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	d.probe = probeFile{ID: id.String(), Entries: len(ids), EntryIDs: ids, NotAfter: svid.Certificates[0].NotAfter}
	b, err := json.Marshal(d.probe)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"probe-svid.pem": certs, "probe-key.pem": key, "probe.json": b} {
		if err := os.WriteFile(filepath.Join(d.dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d.svid = svid
}

// bulk writes the other agents and their entries straight into the
// datastore file (the server is stopped) in big transactions, then prunes
// the journals as the server's prune loop would have: the datastore of a
// server restarted after a while.
func (d *dataset) bulk(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	s, err := sqlstore.Open(ctx, sqlstore.Config{
		DatabaseType: "sqlite3", ConnectionString: filepath.Join(d.dataDir(), "datastore.sqlite3"),
		Synchronous: sqlstore.SynchronousNormal,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	td := stack.TrustDomain
	notAfter := time.Now().Add(365 * 24 * time.Hour).Unix()
	per := d.entriesPerAgent()
	extra := d.p.Entries - per*d.p.Agents // spread over the first agents
	const batch = 20000
	var pending []*datastore.Entry
	flush := func() {
		if len(pending) == 0 {
			return
		}
		res, err := s.CreateEntries(ctx, pending)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res {
			if r.Err != nil {
				t.Fatal(r.Err)
			}
		}
		pending = pending[:0]
	}
	t0 := time.Now()
	for i := 1; i < d.p.Agents; i++ { // agent 0 is the probe
		id := spiffeid.RequireFromSegments(td, "spire", "agent", "join_token", fmt.Sprintf("bench-%08d", i)).String()
		n := &datastore.AttestedNode{
			SPIFFEID: id, AttestationType: "join_token",
			CertSerial: fmt.Sprint(1_000_000_000_000 + i), CertNotAfter: notAfter,
		}
		for k := range d.p.NodeSelectors {
			n.Selectors = append(n.Selectors, selector.Selector{Type: "bench", Value: fmt.Sprintf("s%d:%d", k, i%(1000*(k+1)))})
		}
		if _, err := s.CreateNode(ctx, n); err != nil {
			t.Fatal(err)
		}
		k := per
		if i <= extra {
			k++
		}
		for j := range k {
			pending = append(pending, &datastore.Entry{
				SPIFFEID:  spiffeid.RequireFromSegments(td, "fleet", "agent", fmt.Sprint(i), "workload", fmt.Sprint(j)).String(),
				ParentID:  id,
				Selectors: []selector.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", 10000+j)}},
			})
		}
		if len(pending) >= batch {
			flush()
		}
		if i%10000 == 0 {
			t.Logf("generating: %d agents, %v", i, time.Since(t0).Round(time.Second))
		}
	}
	flush()
	if _, err := s.PruneEvents(ctx, time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	ne, err := s.CountEntries(ctx, datastore.EntryFilter{})
	if err != nil {
		t.Fatal(err)
	}
	nn, err := s.CountNodes(ctx, datastore.NodeFilter{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("datastore: %d entries, %d agents, written in %v", ne, nn, time.Since(t0).Round(time.Second))
}

// attest attests a new agent with a join token and returns its SVID.
func attest(ctx context.Context, addr string, bundle []*x509.Certificate, id spiffeid.ID, token string) (*x509svid.SVID, error) {
	key, csr, err := stack.NewCSR()
	if err != nil {
		return nil, err
	}
	c, err := client.Dial(client.Config{Addr: addr, TrustDomain: stack.TrustDomain, Bundle: func() []*x509.Certificate { return bundle }})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	chain, err := c.AttestJoinToken(ctx, token, csr)
	if err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, nil
}

// result is one timed restart: durations from the process start.
type result struct {
	Listen, Serving, Attest, Sync time.Duration
	Entries                       int   // the probe's entries in its sync
	HWM, RSS                      int64 // peak and current RSS after the sync, bytes
	CPU                           time.Duration
	Load                          string
}

func (r result) String() string {
	return fmt.Sprintf("listening %v, serving %v, new agent attested %v, probe synced %d entries %v; peak RSS %.0f MiB (now %.0f MiB), CPU %v; load %s",
		r.Listen.Round(time.Millisecond), r.Serving.Round(time.Millisecond), r.Attest.Round(time.Millisecond), r.Entries,
		r.Sync.Round(time.Millisecond), float64(r.HWM)/(1<<20), float64(r.RSS)/(1<<20), r.CPU.Round(10*time.Millisecond), r.Load)
}

func median(rs []result) result {
	med := func(f func(result) int64) int64 {
		v := make([]int64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	return result{
		Listen:  time.Duration(med(func(r result) int64 { return int64(r.Listen) })),
		Serving: time.Duration(med(func(r result) int64 { return int64(r.Serving) })),
		Attest:  time.Duration(med(func(r result) int64 { return int64(r.Attest) })),
		Sync:    time.Duration(med(func(r result) int64 { return int64(r.Sync) })),
		Entries: int(med(func(r result) int64 { return int64(r.Entries) })),
		HWM:     med(func(r result) int64 { return r.HWM }),
		RSS:     med(func(r result) int64 { return r.RSS }),
		CPU:     time.Duration(med(func(r result) int64 { return int64(r.CPU) })),
		Load:    stack.LoadAvg(),
	}
}

// measure starts the server on the dataset and times it to serving,
// attesting and syncing, then stops it.
func (d *dataset) measure(t *testing.T, bin string, keepLog bool) result {
	t.Helper()
	ctx := context.Background()
	srv := newServer(t, bin, d.serverConfig(t))
	t0 := time.Now()
	proc := srv.StartProcess(t)
	defer func() {
		if err := srv.Proc.Stop(); err != nil {
			t.Error(err)
		}
		if keepLog && *flagKeepLog != "" {
			if b, err := os.ReadFile(proc.LogPath); err == nil {
				_ = os.WriteFile(*flagKeepLog, b, 0o600)
			}
		}
	}()
	var r result
	// The agent API accepting connections.
	err := testutil.Poll(time.Hour, 5*time.Millisecond, func() (bool, error) {
		if proc.Exited() {
			return false, fmt.Errorf("%s exited: %v", srv.Name(), proc.Err())
		}
		c, err := net.DialTimeout("tcp", srv.Addr(), 100*time.Millisecond)
		if err != nil {
			return false, nil
		}
		c.Close()
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	r.Listen = time.Since(t0)
	if err := stack.WaitServing(srv, time.Hour, 5*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	r.Serving = time.Since(t0)
	admin := srv.Admin(t)
	bundle, err := admin.Client.BundleCerts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := admin.Client.CreateJoinToken(ctx, spiffeid.ID{}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attest(ctx, srv.Addr(), bundle, admin.JoinTokenAgentID(tok), tok); err != nil {
		t.Fatal(err)
	}
	r.Attest = time.Since(t0)
	c, err := client.Dial(client.Config{Addr: srv.Addr(), TrustDomain: stack.TrustDomain,
		Bundle: func() []*x509.Certificate { return bundle }, SVID: func() *x509svid.SVID { return d.svid }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	round, err := c.SyncEntries(ctx, nil)
	if err != nil {
		t.Fatalf("probe agent's sync: %v", err)
	}
	r.Sync = time.Since(t0)
	r.Entries = len(round.Entries)
	if r.Entries != d.probe.Entries {
		t.Errorf("probe agent synced %d entries, want %d", r.Entries, d.probe.Entries)
	}
	m, err := stack.ProcessMemory(proc.Pid())
	if err != nil {
		t.Fatal(err)
	}
	r.HWM, r.RSS = m.PeakRSS, m.RSS
	r.CPU, _ = stack.ProcessCPUTime(proc.Pid())
	r.Load = stack.LoadAvg()
	return r
}
