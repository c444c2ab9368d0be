package testutil

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// ReadyTimeout bounds the readiness waits of StartServer and StartAgent.
const ReadyTimeout = 30 * time.Second

// Server is a sigil-server process run from a configuration file.
type Server struct {
	Config     ServerConfig
	ConfigPath string
	// Wrap prefixes the command line (e.g. to run in a network namespace).
	Wrap []string
	// Env is added to the process's environment (e.g. SSL_CERT_FILE: the
	// Web PKI roots of https_web federation).
	Env []string
	// WorkDir is the process's working directory ("": the test's).
	WorkDir string
	Proc    *Process

	name  string // process name: sigil-server or spire-server
	bin   string
	admin *Admin
}

// NewServer writes the server's configuration (filling cfg's defaults)
// without starting it. cfg.DataDir "" is a fresh ShortTempDir.
func NewServer(t testing.TB, cfg ServerConfig, wrap ...string) *Server {
	t.Helper()
	bin, _ := Binaries(t)
	return newServer(t, "sigil-server", bin, cfg, wrap...)
}

// NewServerBin is NewServer with a sigil-server binary built elsewhere
// (e.g. from another commit, to compare two builds in one benchmark run).
func NewServerBin(t testing.TB, bin string, cfg ServerConfig, wrap ...string) *Server {
	t.Helper()
	return newServer(t, "sigil-server", bin, cfg, wrap...)
}

func newServer(t testing.TB, name, bin string, cfg ServerConfig, wrap ...string) *Server {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = ShortTempDir(t)
	}
	if err := cfg.defaults(); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	s := &Server{Config: cfg, ConfigPath: filepath.Join(cfg.DataDir, "server.conf"), Wrap: wrap, name: name, bin: bin}
	writeFile(t, s.ConfigPath, cfg.HCL())
	return s
}

// StartServer writes the configuration, starts the server and waits until
// its admin API reports SERVING.
func StartServer(t testing.TB, cfg ServerConfig, wrap ...string) *Server {
	t.Helper()
	s := NewServer(t, cfg, wrap...)
	s.Start(t)
	return s
}

// WriteConfig replaces the configuration file with hcl (a configuration
// written by hand, e.g. the README's), for the next Start. Config keeps
// what the helpers use (socket path, port, data dir, trust domain): hcl
// must agree with it.
func (s *Server) WriteConfig(t testing.TB, hcl string) {
	t.Helper()
	writeFile(t, s.ConfigPath, hcl)
}

// Start (re)starts the server process from ConfigPath and waits for it.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	s.StartProcess(t)
	s.WaitReady(t)
}

// StartProcess (re)starts the server process from ConfigPath without
// waiting for it to be ready, e.g. to see it refuse to start.
func (s *Server) StartProcess(t testing.TB) *Process {
	t.Helper()
	if s.Proc != nil && !s.Proc.Exited() {
		t.Fatal("testutil: server already running")
	}
	s.Proc = Start(t, Command{
		Name: s.name, Path: s.bin, Wrap: s.Wrap, Env: s.Env, Dir: s.WorkDir,
		Args:    []string{"run", "-config", s.ConfigPath},
		LogPath: filepath.Join(s.Config.DataDir, "server.log"),
	})
	return s.Proc
}

// Stop stops the server (SIGTERM, then SIGKILL) and fails the test if it
// did not exit cleanly.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	if err := s.Proc.Stop(); err != nil {
		t.Fatalf("stop %s: %v", s.name, err)
	}
}

// Addr is host:port agents dial.
func (s *Server) Addr() string {
	return net.JoinHostPort(s.Config.BindAddress, itoa(s.Config.BindPort))
}

// MetricsURL is the server's telemetry exporter URL (Config.MetricsPort).
func (s *Server) MetricsURL() string {
	return "http://" + net.JoinHostPort("127.0.0.1", itoa(s.Config.MetricsPort)) + "/metrics"
}

// TrustDomain is the server's trust domain.
func (s *Server) TrustDomain() spiffeid.TrustDomain {
	return spiffeid.RequireTrustDomainFromString(s.Config.TrustDomain)
}

// ID builds a SPIFFE ID in the server's trust domain.
func (s *Server) ID(path string) spiffeid.ID {
	return spiffeid.RequireFromPath(s.TrustDomain(), path)
}

// WaitReady waits until the admin socket answers the gRPC health check
// with SERVING, failing if the process exits first.
func (s *Server) WaitReady(t testing.TB) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+s.Config.SocketPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	err = Poll(ReadyTimeout, 25*time.Millisecond, func() (bool, error) {
		if s.Proc.Exited() {
			return false, fmt.Errorf("%s exited: %v", s.name, s.Proc.err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING, nil
	})
	if err != nil {
		t.Fatalf("%s not ready: %v", s.name, err)
	}
}

// Admin is a client of the server's admin API, dialled once and closed on
// cleanup. It survives server restarts (gRPC reconnects).
func (s *Server) Admin(t testing.TB) *Admin {
	t.Helper()
	if s.admin == nil {
		s.admin = DialAdmin(t, s.Config.SocketPath, s.TrustDomain())
	}
	return s.admin
}

// Agent is a sigil-agent process run from a configuration file.
type Agent struct {
	// Config is rendered to ConfigPath on every Start, so a test can
	// change it (e.g. clear JoinToken) between runs.
	Config     AgentConfig
	ConfigPath string
	Wrap       []string
	// Args are extra command-line flags after "run -config F" (e.g.
	// -joinToken), used by every start.
	Args []string
	// Env is added to the agent's environment by every start ("KEY=value",
	// e.g. DBUS_SYSTEM_BUS_ADDRESS).
	Env []string
	// HCL, when set, is written to ConfigPath instead of Config's
	// rendering (a configuration written by hand, e.g. the README's);
	// Config keeps what the helpers use (socket path, data dir).
	HCL  string
	Proc *Process

	name string // process name: sigil-agent or spire-agent
	bin  string
}

// NewAgent prepares an agent (filling cfg's defaults) without starting it.
// cfg.DataDir "" is a fresh ShortTempDir.
func NewAgent(t testing.TB, cfg AgentConfig, wrap ...string) *Agent {
	t.Helper()
	_, bin := Binaries(t)
	return newAgent(t, "sigil-agent", bin, cfg, wrap...)
}

func newAgent(t testing.TB, name, bin string, cfg AgentConfig, wrap ...string) *Agent {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = ShortTempDir(t)
	}
	if err := cfg.defaults(); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	return &Agent{Config: cfg, ConfigPath: filepath.Join(cfg.DataDir, "agent.conf"), Wrap: wrap, name: name, bin: bin}
}

// StartAgent prepares and starts an agent and waits for its Workload API.
func StartAgent(t testing.TB, cfg AgentConfig, wrap ...string) *Agent {
	t.Helper()
	a := NewAgent(t, cfg, wrap...)
	a.Start(t)
	return a
}

// AgentFor returns an AgentConfig pointing at s with a fresh join token
// for spiffe://<td>/<agentPath> and s's bundle as bootstrap trust, written
// to dataDir ("" is a fresh ShortTempDir).
func AgentFor(t testing.TB, s *Server, agentPath, dataDir string) AgentConfig {
	t.Helper()
	cfg := AgentWith(t, s, dataDir, nil)
	cfg.JoinToken = s.Admin(t).CreateJoinToken(t, s.ID(agentPath))
	return cfg
}

// AgentWith returns an AgentConfig pointing at s that attests with the
// node attestor na (nil: join_token, with no token), with s's bundle as
// bootstrap trust, written to dataDir ("" is a fresh ShortTempDir).
func AgentWith(t testing.TB, s *Server, dataDir string, na *Plugin) AgentConfig {
	t.Helper()
	if dataDir == "" {
		dataDir = ShortTempDir(t)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dataDir, "bootstrap.pem")
	writeFile(t, bundle, string(s.Admin(t).BundlePEM(t)))
	return AgentConfig{
		TrustDomain:     s.Config.TrustDomain,
		ServerAddress:   s.Config.BindAddress,
		ServerPort:      s.Config.BindPort,
		DataDir:         dataDir,
		TrustBundlePath: bundle,
		NodeAttestor:    na,
	}
}

// Start writes Config to ConfigPath, starts the agent and waits until its
// Workload API socket accepts connections.
func (a *Agent) Start(t testing.TB) {
	t.Helper()
	if a.Proc != nil && !a.Proc.Exited() {
		t.Fatal("testutil: agent already running")
	}
	// A socket file left by a killed agent must not count as ready.
	_ = os.Remove(a.Config.SocketPath)
	a.StartProcess(t)
	a.WaitReady(t)
}

// StartProcess writes Config to ConfigPath and starts the agent without
// waiting for its Workload API (and without touching its socket path),
// e.g. to see it refuse to start.
func (a *Agent) StartProcess(t testing.TB) *Process {
	t.Helper()
	if a.Proc != nil && !a.Proc.Exited() {
		t.Fatal("testutil: agent already running")
	}
	hcl := a.HCL
	if hcl == "" {
		hcl = a.Config.HCL()
	}
	writeFile(t, a.ConfigPath, hcl)
	a.Proc = Start(t, Command{
		Name: a.name, Path: a.bin, Wrap: a.Wrap, Env: a.Env,
		Args:    append([]string{"run", "-config", a.ConfigPath}, a.Args...),
		LogPath: filepath.Join(a.Config.DataDir, "agent.log"),
	})
	return a.Proc
}

// Stop stops the agent (SIGTERM, then SIGKILL), failing the test if it
// did not exit cleanly.
func (a *Agent) Stop(t testing.TB) {
	t.Helper()
	if err := a.Proc.Stop(); err != nil {
		t.Fatalf("stop %s: %v", a.name, err)
	}
}

// WaitReady waits until the Workload API socket accepts connections.
func (a *Agent) WaitReady(t testing.TB) {
	t.Helper()
	err := Poll(ReadyTimeout, 10*time.Millisecond, func() (bool, error) {
		if a.Proc.Exited() {
			return false, fmt.Errorf("%s exited: %v", a.name, a.Proc.err)
		}
		c, err := net.Dial("unix", a.Config.SocketPath)
		if err != nil {
			return false, nil
		}
		_ = c.Close()
		return true, nil
	})
	if err != nil {
		t.Fatalf("%s not ready: %v", a.name, err)
	}
}

// SocketAddr is the Workload API address in go-spiffe form (unix://...).
func (a *Agent) SocketAddr() string { return "unix://" + a.Config.SocketPath }

// MetricsURL is the agent's telemetry exporter URL (Config.MetricsPort).
func (a *Agent) MetricsURL() string {
	return "http://" + net.JoinHostPort("127.0.0.1", itoa(a.Config.MetricsPort)) + "/metrics"
}
