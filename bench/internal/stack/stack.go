// Package stack assembles a real Sigil server (SQLite or PostgreSQL, disk keys) and
// agents for the end-to-end benchmarks, in-process (internal/testutil/inproc)
// or as processes (internal/testutil): the admin API is driven with
// testutil.Admin over the server's unix socket, agents attest with join
// tokens.
//
// It takes a testing.TB so setup failures stop the benchmark, and
// registers every shutdown with TB.Cleanup. Use it only from _test.go files.
package stack

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/internal/adminclient"
	"github.com/sigil-spiffe/sigil/internal/agent/client"
	agentapp "github.com/sigil-spiffe/sigil/internal/app/agent"
	serverapp "github.com/sigil-spiffe/sigil/internal/app/server"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/inproc"
	"github.com/sigil-spiffe/sigil/internal/testutil/pgtest"
)

// TrustDomain is the benchmarks' trust domain.
var TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")

// Logger is what the components log to: a text handler at the default
// production level (INFO) writing to io.Discard, so per-request log
// formatting is part of what is measured, as it would be in production.
func Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// Server is a running sigil-server with its admin API (testutil.Admin:
// join tokens, entries, bundle; the service clients for other calls).
type Server struct {
	*testutil.Admin
	Dir  string // short temp dir holding the data dir and sockets
	Addr string // agent endpoint host:port
	// Pid is the server's process ID when it runs as a separate process
	// (StartServerProcess), 0 when in-process.
	Pid int

	proc     *testutil.Process // set by StartServerProcess
	agentSeq atomic.Int64
}

// StartServer runs a server on SQLite with a disk key manager and the
// join_token attestor (plus plugins, e.g. a NodeAttestor "x509pop"), rate
// limits at their defaults, until cleanup.
// BENCH_SQLITE_SYNCHRONOUS, when set, is the datastore's
// sqlite_synchronous ("full", the default, or "normal"), to compare the
// two in one binary. BENCH_DATASTORE=postgres puts the datastore on a
// PostgreSQL cluster of its own instead (pgtest, with PostgreSQL's durable
// defaults: fsync and synchronous_commit on, as SQLite's FULL), to
// compare the backends in one binary.
func StartServer(tb testing.TB, plugins ...config.Plugin) *Server {
	tb.Helper()
	var ds config.Plugin
	switch name := os.Getenv("BENCH_DATASTORE"); name {
	case "", "sqlite", "sqlite3":
	case "postgres":
		ds = PostgresDataStore(tb, pgtest.Start(tb, pgtest.Options{Durable: true}))
	default:
		tb.Fatalf("BENCH_DATASTORE=%q: want sqlite or postgres", name)
	}
	return StartServerWith(tb, ds, serverapp.Options{}, plugins...)
}

// PostgresDataStore is DataStore "sql" on a new database of cluster c.
func PostgresDataStore(tb testing.TB, c *pgtest.Cluster) config.Plugin {
	tb.Helper()
	return config.NewPlugin("DataStore", "sql", map[string]any{"database_type": "postgres", "connection_string": c.NewDatabase(tb)})
}

// StartServerWith is StartServer with the DataStore ds (the zero Plugin:
// SQLite in the server's data dir, as StartServer) and the app's options
// opts. Servers given one ds share its database (HA).
func StartServerWith(tb testing.TB, ds config.Plugin, opts serverapp.Options, plugins ...config.Plugin) *Server {
	tb.Helper()
	dir := testutil.ShortTempDir(tb)
	port, err := testutil.FreePort()
	if err != nil {
		tb.Fatal(err)
	}
	cfg := inproc.ServerConfig(TrustDomain, filepath.Join(dir, "server"), filepath.Join(dir, "server.sock"), port)
	if ds.Type == "" {
		cfg.SetPlugin(inproc.SQLDataStore(cfg.DataDir, os.Getenv("BENCH_SQLITE_SYNCHRONOUS")))
	} else {
		cfg.SetPlugin(ds)
	}
	for _, p := range plugins {
		cfg.SetPlugin(p)
	}
	srv, err := inproc.StartServer(cfg, Logger(), opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := srv.Stop(); err != nil && !errors.Is(err, context.Canceled) {
			tb.Logf("server stopped: %v", err)
		}
	})
	s := &Server{Admin: testutil.DialAdmin(tb, cfg.SocketPath, TrustDomain), Dir: dir, Addr: srv.Srv.TCPAddr().String()}
	return s
}

// StartServerProcess runs a real sigil-server binary (built once per test
// binary by internal/testutil; SQLite, disk keys, join_token, log level
// INFO to a file) so its CPU time can be measured apart from the client's
// (ProcessCPUTime). The caller's TestMain must call testutil.Main.
func StartServerProcess(tb testing.TB) *Server {
	tb.Helper()
	p := testutil.StartServer(tb, testutil.ServerConfig{TrustDomain: TrustDomain.Name(), LogLevel: "INFO"})
	tb.Cleanup(func() { _ = p.Proc.Stop() }) // graceful first; testutil kills as a fallback
	s := &Server{Admin: p.Admin(tb), Dir: p.Config.DataDir, Addr: p.Addr(), Pid: p.Proc.Pid(), proc: p.Proc}
	return s
}

// JoinToken creates a join token for a new agent SPIFFE ID.
func (s *Server) JoinToken(tb testing.TB) (token string, agentID spiffeid.ID) {
	tb.Helper()
	agentID = spiffeid.RequireFromSegments(TrustDomain, "bench", "agent", fmt.Sprint(s.agentSeq.Add(1)))
	return s.CreateJoinToken(tb, agentID), agentID
}

// Entry builds a registration entry for id under parent with one selector
// ("unix", value).
func Entry(parent, id spiffeid.ID, unixSelector string) *types.Entry {
	return &types.Entry{
		SpiffeId:  adminclient.ProtoID(id),
		ParentId:  adminclient.ProtoID(parent),
		Selectors: []*types.Selector{{Type: "unix", Value: unixSelector}},
	}
}

// AttestedClient attests a new agent with a join token through
// internal/agent/client and returns a client connected with its SVID (mTLS).
func (s *Server) AttestedClient(tb testing.TB) (*client.Client, spiffeid.ID) {
	tb.Helper()
	token, agentID := s.JoinToken(tb)
	return AttestClient(tb, s.Addr, s.BundleCerts(tb), token), agentID
}

// AttestClient attests an agent to the server at addr (bundle: its X.509
// authorities) with join token token through internal/agent/client, and
// returns a client connected with the agent SVID (mTLS), closed on
// cleanup.
func AttestClient(tb testing.TB, addr string, bundle []*x509.Certificate, token string) *client.Client {
	tb.Helper()
	bootstrap, err := client.Dial(client.Config{Addr: addr, TrustDomain: TrustDomain, Bundle: func() []*x509.Certificate { return bundle }})
	if err != nil {
		tb.Fatal(err)
	}
	defer bootstrap.Close()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		tb.Fatal(err)
	}
	chain, err := bootstrap.AttestJoinToken(context.Background(), token, csr)
	if err != nil {
		tb.Fatalf("attest: %v", err)
	}
	id, err := x509svid.IDFromCert(chain[0])
	if err != nil {
		tb.Fatal(err)
	}
	svid := &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
	c, err := client.Dial(client.Config{
		Addr:        addr,
		TrustDomain: TrustDomain,
		Bundle:      func() []*x509.Certificate { return bundle },
		SVID:        func() *x509svid.SVID { return svid },
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// AgentConfig returns the configuration of an agent with data dir dir
// (created), the unix workload attestor and, when token is set, join-token
// attestation.
func (s *Server) AgentConfig(tb testing.TB, dir, token string) *config.Agent {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		tb.Fatal(err)
	}
	host, port, err := net.SplitHostPort(s.Addr)
	if err != nil {
		tb.Fatal(err)
	}
	portNum, err := strconv.Atoi(port)
	if err != nil {
		tb.Fatal(err)
	}
	cfg := inproc.AgentConfig(TrustDomain, dir, filepath.Join(dir, "api.sock"), host, portNum, s.WriteBundlePEM(tb, filepath.Join(dir, "bundle.pem")), token)
	if err := cfg.Validate(); err != nil {
		tb.Fatalf("agent configuration: %v", err)
	}
	return cfg
}

// Agent is a running in-process agent.
type Agent struct {
	Socket string // Workload API address, "unix://..."
	a      *inproc.Agent
}

// StartAgent builds and runs an agent until Stop or cleanup, and waits for
// its Workload API socket.
func StartAgent(tb testing.TB, cfg *config.Agent) *Agent {
	tb.Helper()
	a, err := RunAgent(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(a.Stop)
	return a
}

// RunAgent is StartAgent without a TB: agent.New, Run in a goroutine, wait
// for Ready. The caller must Stop it.
func RunAgent(cfg *config.Agent) (*Agent, error) {
	a, err := inproc.StartAgent(cfg, Logger(), agentapp.Options{})
	if err != nil {
		return nil, err
	}
	return &Agent{Socket: a.SocketAddr(), a: a}, nil
}

// Stop stops the agent and waits for Run to return. It is idempotent.
func (a *Agent) Stop() { _ = a.a.Stop() }
