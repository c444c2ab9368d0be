// Package inproc runs a real sigil-server and sigil-agent inside the test
// process (internal/app/server and internal/app/agent, not the binaries):
// the configuration every in-process harness uses (SQLite, disk keys,
// join-token attestation, unix workload attestor), and start/ready/stop
// of each component, and (testing.go) the test-facing calls that fail the
// test, stop on its cleanup and drive the server's admin API
// (testutil.Admin). It is the one in-process server harness: test/nested,
// test/offline, bench/internal/stack and package tests that need a whole
// server build on it; internal/testutil runs the same components as
// separate processes.
//
// It is a separate package from internal/testutil so that importing the
// process helpers does not link the whole server and agent.
//
// Import it only from test code.
package inproc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	agentapp "github.com/sigil-spiffe/sigil/internal/app/agent"
	"github.com/sigil-spiffe/sigil/internal/app/dev"
	serverapp "github.com/sigil-spiffe/sigil/internal/app/server"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// readyTimeout bounds how long Start* and Stop wait for a component.
const readyTimeout = 30 * time.Second

// ServerConfig is the configuration of a server in trust domain td with
// its state (SQLite datastore, disk keys) under dataDir, its admin API on
// socketPath and its agent API on 127.0.0.1:port (0: a free port), with
// join-token node attestation: the dev environment's (dev.ServerConfig).
// The caller may edit it before StartServer.
func ServerConfig(td spiffeid.TrustDomain, dataDir, socketPath string, port int) *config.Server {
	return dev.ServerConfig(td, dataDir, socketPath, port)
}

// SQLDataStore is the DataStore "sql" of ServerConfig: SQLite in
// dataDir/datastore.sqlite3, with sqlite_synchronous set unless "".
func SQLDataStore(dataDir, synchronous string) config.Plugin {
	return dev.SQLDataStore(dataDir, synchronous)
}

// AgentConfig returns the configuration of an agent in trust domain td
// with its state (disk keys) under dataDir, its Workload API on
// socketPath, talking to the server at serverHost:serverPort, bootstrapped
// with the PEM bundle at bundlePath, attesting with join token token (may
// be empty when the agent already has an SVID) and attesting workloads
// with the unix attestor: the dev environment's (dev.AgentConfig).
func AgentConfig(td spiffeid.TrustDomain, dataDir, socketPath, serverHost string, serverPort int, bundlePath, token string) *config.Agent {
	return dev.AgentConfig(td, dataDir, socketPath, serverHost, serverPort, bundlePath, token)
}

// runner is a component's Run loop in a goroutine.
type runner struct {
	cancel context.CancelFunc
	done   chan error
}

// start runs run in a goroutine and waits until ready is closed, Run
// returns, or readyTimeout passes; on failure the component is stopped.
func start(cancel context.CancelFunc, run func() error, ready <-chan struct{}) (*runner, error) {
	r := &runner{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- run() }()
	select {
	case <-ready:
		return r, nil
	case err := <-r.done:
		r.done <- err
		cancel()
		return nil, fmt.Errorf("stopped before it was ready: %w", err)
	case <-time.After(readyTimeout):
		return nil, errors.Join(errors.New("not ready after 30s"), r.stop())
	}
}

// stop cancels Run and returns its error. It is idempotent: later calls
// return nil.
func (r *runner) stop() error {
	if r.cancel == nil {
		return nil
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		return err
	case <-time.After(readyTimeout):
		return errors.New("did not stop within 30s")
	}
}

// Server is a running in-process server.
type Server struct {
	Srv *serverapp.Server
	Cfg *config.Server
	r   *runner

	admin *testutil.Admin // dialled by Admin
}

// StartServer validates cfg, builds the server with opts, runs it until
// Stop and waits until it serves.
func StartServer(cfg *config.Server, log *slog.Logger, opts serverapp.Options) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("server configuration: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := serverapp.New(ctx, cfg, log, opts)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("server: %w", err)
	}
	r, err := start(cancel, func() error { return srv.Run(ctx) }, srv.Ready())
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	return &Server{Srv: srv, Cfg: cfg, r: r}, nil
}

// Stop stops the server and returns Run's error. It is idempotent.
func (s *Server) Stop() error { return s.r.stop() }

// Agent is a running in-process agent.
type Agent struct {
	A   *agentapp.Agent
	Cfg *config.Agent
	r   *runner
}

// StartAgent validates cfg, builds the agent with opts, runs it until Stop
// and waits until its Workload API serves.
func StartAgent(cfg *config.Agent, log *slog.Logger, opts agentapp.Options) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("agent configuration: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := agentapp.New(ctx, cfg, log, opts)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("agent: %w", err)
	}
	r, err := start(cancel, func() error { return a.Run(ctx) }, a.Ready())
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	return &Agent{A: a, Cfg: cfg, r: r}, nil
}

// Stop stops the agent and returns Run's error. It is idempotent.
func (a *Agent) Stop() error { return a.r.stop() }

// SocketAddr is the agent's Workload API address for go-spiffe.
func (a *Agent) SocketAddr() string { return "unix://" + a.Cfg.SocketPath }
