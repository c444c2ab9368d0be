package stack

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// AgentProcess is a sigil-agent running as a separate process.
type AgentProcess struct {
	Socket string // Workload API address, "unix://..."
	Pid    int
	Proc   *testutil.Process
}

// BuildReleaseAgent builds cmd/sigil-agent the way releases are built
// (CGO_ENABLED=0, -tags grpcnotrace, -ldflags '-s -w'; see .ci/run and the
// README) into a temporary directory removed on cleanup, and returns the
// binary's path. The build cache makes repeated calls cost a link.
func BuildReleaseAgent(tb testing.TB) string {
	tb.Helper()
	root, err := testutil.ModuleRoot()
	if err != nil {
		tb.Fatal(err)
	}
	out := filepath.Join(testutil.ShortTempDir(tb), "sigil-agent")
	cmd := exec.Command("go", "build", "-tags", "grpcnotrace", "-ldflags", "-s -w", "-o", out, "./cmd/sigil-agent")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("build release sigil-agent: %v\n%s", err, b)
	}
	return out
}

// StartAgentProcess runs a release-built sigil-agent (BuildReleaseAgent)
// against s with join token token, the unix workload attestor and log level
// INFO (to a file), until cleanup, and waits for its Workload API socket.
// When BENCH_AGENT_GOMAXPROCS is set, the agent alone runs with that
// GOMAXPROCS (the benchmark process keeps its own).
func (s *Server) StartAgentProcess(tb testing.TB, token string) *AgentProcess {
	tb.Helper()
	return s.StartAgentProcessWith(tb, token, AgentOptions{})
}

// AgentOptions add to StartAgentProcess's agent.
type AgentOptions struct {
	// WorkloadAttestors run beside WorkloadAttestor "unix".
	WorkloadAttestors []testutil.Plugin
	// Env is added to the agent's environment ("KEY=value").
	Env []string
}

// StartAgentProcessWith is StartAgentProcess with more workload
// attestors and environment.
func (s *Server) StartAgentProcessWith(tb testing.TB, token string, opts AgentOptions) *AgentProcess {
	tb.Helper()
	bin := BuildReleaseAgent(tb)
	dir := testutil.ShortTempDir(tb)
	host, port, err := net.SplitHostPort(s.Addr)
	if err != nil {
		tb.Fatal(err)
	}
	portN, err := strconv.Atoi(port)
	if err != nil {
		tb.Fatal(err)
	}
	cfg := testutil.AgentConfig{
		TrustDomain:     TrustDomain.Name(),
		ServerAddress:   host,
		ServerPort:      portN,
		DataDir:         dir,
		SocketPath:      filepath.Join(dir, "api.sock"),
		TrustBundlePath: s.WriteBundlePEM(tb, filepath.Join(dir, "bundle.pem")),
		JoinToken:       token,
		LogLevel:        "INFO",

		WorkloadAttestors: opts.WorkloadAttestors,
	}
	confPath := filepath.Join(dir, "agent.conf")
	if err := os.WriteFile(confPath, []byte(cfg.HCL()), 0o600); err != nil {
		tb.Fatal(err)
	}
	env := append([]string(nil), opts.Env...)
	if v := os.Getenv("BENCH_AGENT_GOMAXPROCS"); v != "" {
		env = append(env, "GOMAXPROCS="+v)
	}
	p := testutil.Start(tb, testutil.Command{
		Name: "sigil-agent", Path: bin, Env: env,
		Args:    []string{"run", "-config", confPath},
		LogPath: filepath.Join(dir, "agent.log"),
	})
	tb.Cleanup(func() { _ = p.Stop() })
	err = testutil.Poll(30*time.Second, 10*time.Millisecond, func() (bool, error) {
		if p.Exited() {
			return false, fmt.Errorf("sigil-agent exited: %v", p.Err())
		}
		c, err := net.Dial("unix", cfg.SocketPath)
		if err != nil {
			return false, nil
		}
		_ = c.Close()
		return true, nil
	})
	if err != nil {
		tb.Fatalf("sigil-agent not ready: %v", err)
	}
	return &AgentProcess{Socket: "unix://" + cfg.SocketPath, Pid: p.Pid(), Proc: p}
}

// StopProcess stops a server started by StartServerProcess (SIGTERM, then
// SIGKILL) before cleanup would, returning its exit error; it does nothing
// for an in-process server.
func (s *Server) StopProcess() error {
	if s.proc == nil {
		return nil
	}
	return s.proc.Stop()
}
