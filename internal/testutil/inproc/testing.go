package inproc

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	agentapp "github.com/sigil-spiffe/sigil/internal/app/agent"
	serverapp "github.com/sigil-spiffe/sigil/internal/app/server"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// This file is the test-facing side of the harness: servers and agents
// that fail the test when they cannot start, stop on its cleanup, and a
// server's admin API (testutil.Admin) to create join tokens, entries and
// bootstrap bundles for its agents.

// RunServer starts a server from cfg (see StartServer; a nil log
// discards) and stops it on cleanup, reporting a Run error there.
func RunServer(tb testing.TB, cfg *config.Server, log *slog.Logger, opts serverapp.Options) *Server {
	tb.Helper()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s, err := StartServer(cfg, log, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.StopT(tb) })
	return s
}

// StopT stops the server, failing tb (without stopping it) if Run
// returned an error. It is idempotent.
func (s *Server) StopT(tb testing.TB) {
	tb.Helper()
	if err := s.Stop(); err != nil && !errors.Is(err, context.Canceled) {
		tb.Errorf("server: %v", err)
	}
}

// Admin is a client of the server's admin socket, dialled on first use and
// closed on tb's cleanup. It reconnects across restarts on the same socket.
func (s *Server) Admin(tb testing.TB) *testutil.Admin {
	tb.Helper()
	if s.admin == nil {
		s.admin = testutil.DialAdmin(tb, s.Cfg.SocketPath, s.Cfg.TrustDomain)
	}
	return s.admin
}

// Addr is the agent endpoint's host:port.
func (s *Server) Addr() string { return s.Srv.TCPAddr().String() }

// Port is the agent endpoint's port (the one bound when cfg asked for 0).
func (s *Server) Port() int { return s.Srv.TCPAddr().(*net.TCPAddr).Port }

// AgentConfig is the configuration of an agent of this server (see the
// package's AgentConfig) with its state in dataDir (created), its Workload
// API on dataDir/api.sock, the server's current bundle written to
// dataDir/bootstrap.pem as its bootstrap trust, and join token token ("" for
// an agent that already has its SVID). It is validated.
func (s *Server) AgentConfig(tb testing.TB, dataDir, token string) *config.Agent {
	tb.Helper()
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		tb.Fatal(err)
	}
	bundle := s.Admin(tb).WriteBundlePEM(tb, filepath.Join(dataDir, "bootstrap.pem"))
	host, port, err := net.SplitHostPort(s.Addr())
	if err != nil {
		tb.Fatal(err)
	}
	portNum, err := strconv.Atoi(port)
	if err != nil {
		tb.Fatal(err)
	}
	cfg := AgentConfig(s.Cfg.TrustDomain, dataDir, filepath.Join(dataDir, "api.sock"), host, portNum, bundle, token)
	if err := cfg.Validate(); err != nil {
		tb.Fatalf("agent configuration: %v", err)
	}
	return cfg
}

// StartAgent creates a join token for agentID, and runs an agent of this
// server with it in dataDir (AgentConfig, RunAgent).
func (s *Server) StartAgent(tb testing.TB, dataDir string, agentID spiffeid.ID, log *slog.Logger, opts agentapp.Options) *Agent {
	tb.Helper()
	token := s.Admin(tb).CreateJoinToken(tb, agentID)
	return RunAgent(tb, s.AgentConfig(tb, dataDir, token), log, opts)
}

// RunAgent starts an agent from cfg (see StartAgent; a nil log discards)
// and stops it on cleanup, reporting a Run error there.
func RunAgent(tb testing.TB, cfg *config.Agent, log *slog.Logger, opts agentapp.Options) *Agent {
	tb.Helper()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a, err := StartAgent(cfg, log, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { a.StopT(tb) })
	return a
}

// StopT stops the agent, failing tb if Run returned an error. It is
// idempotent.
func (a *Agent) StopT(tb testing.TB) {
	tb.Helper()
	if err := a.Stop(); err != nil && !errors.Is(err, context.Canceled) {
		tb.Errorf("agent: %v", err)
	}
}
