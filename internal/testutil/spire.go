package testutil

import (
	"os"
	"path/filepath"
	"testing"
)

// SPIREBinEnv names the environment variable holding the directory of
// real SPIRE binaries (spire-server and spire-agent) for interoperability
// tests. README ("SPIRE interoperability tests") says how to build them.
const SPIREBinEnv = "SIGIL_SPIRE_BIN"

// SPIREBinaries returns the spire-server and spire-agent binaries of
// SIGIL_SPIRE_BIN. It skips the test when the variable is unset (CI has no
// SPIRE binaries) and fails it when the variable names a directory without
// them.
func SPIREBinaries(t testing.TB) (server, agent string) {
	t.Helper()
	dir := os.Getenv(SPIREBinEnv)
	if dir == "" {
		t.Skipf("%s is not set: SPIRE interoperability needs real spire-server and spire-agent binaries (README: SPIRE interoperability tests)", SPIREBinEnv)
	}
	server, agent = filepath.Join(dir, "spire-server"), filepath.Join(dir, "spire-agent")
	for _, b := range []string{server, agent} {
		st, err := os.Stat(b)
		if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			t.Fatalf("%s=%s: no executable %s there (%v)", SPIREBinEnv, dir, filepath.Base(b), err)
		}
	}
	return server, agent
}

// NewSPIREServer writes cfg as server.conf, exactly as for sigil-server
// (ServerConfig renders SPIRE's syntax and only keys both implement), and
// returns a spire-server that Start runs from it. Everything else (Admin,
// ID, WaitReady on the admin socket's gRPC health service) works as for a
// sigil-server.
func NewSPIREServer(t testing.TB, cfg ServerConfig) *Server {
	t.Helper()
	bin, _ := SPIREBinaries(t)
	return newServer(t, "spire-server", bin, cfg)
}

// StartSPIREServer is NewSPIREServer and Start.
func StartSPIREServer(t testing.TB, cfg ServerConfig) *Server {
	t.Helper()
	s := NewSPIREServer(t, cfg)
	s.Start(t)
	return s
}

// NewSPIREAgent prepares a spire-agent run from cfg rendered as agent.conf,
// exactly as for sigil-agent (leave the Sigil extension FilesystemDelivery
// unset). A spire-agent opens its Workload API socket only
// after it attested and synced once, so Start waits for that.
func NewSPIREAgent(t testing.TB, cfg AgentConfig) *Agent {
	t.Helper()
	_, bin := SPIREBinaries(t)
	return newAgent(t, "spire-agent", bin, cfg)
}

// StartSPIREAgent is NewSPIREAgent and Start.
func StartSPIREAgent(t testing.TB, cfg AgentConfig) *Agent {
	t.Helper()
	a := NewSPIREAgent(t, cfg)
	a.Start(t)
	return a
}

// Name is the server's process name (sigil-server or spire-server).
func (s *Server) Name() string { return s.name }

// Bin is the server's binary, also its CLI.
func (s *Server) Bin() string { return s.bin }

// Name is the agent's process name (sigil-agent or spire-agent).
func (a *Agent) Name() string { return a.name }

// Bin is the agent's binary, also its CLI.
func (a *Agent) Bin() string { return a.bin }
