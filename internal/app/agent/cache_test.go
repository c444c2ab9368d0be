package agent

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/config"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// TestCorruptCacheStartsEmpty: a persisted workload cache that cannot be
// loaded (here an entry that is null, as FuzzLoad produces) must not keep
// the agent from starting: it starts with an empty cache, says so, and
// serves the Workload API.
func TestCorruptCacheStartsEmpty(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, cache.FileName), []byte(`{"version":1,"trust_domain":"example.org","entries":[null]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config.DefaultAgent()
	cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")
	cfg.DataDir = dir
	cfg.SocketPath = filepath.Join(dir, "api.sock")
	cfg.ServerAddress = "127.0.0.1"
	cfg.ServerPort = 1 // nothing listens: the agent keeps retrying in the background
	cfg.InsecureBootstrap = true
	cfg.JoinToken = "token"
	cfg.Plugins = []config.Plugin{
		config.NewPlugin("NodeAttestor", "join_token", nil),
		config.NewPlugin("KeyManager", "memory", nil),
		config.NewPlugin("WorkloadAttestor", "unix", nil),
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	a, err := New(context.Background(), cfg, slog.New(slog.NewTextHandler(&logs, nil)), Options{})
	if err != nil {
		t.Fatalf("agent does not start with a corrupt cache file: %v", err)
	}
	if got := a.cache.Entries(); len(got) != 0 {
		t.Fatalf("cache holds %d entries from a file it refused", len(got))
	}
	if !strings.Contains(logs.String(), "Ignoring the persisted workload cache") {
		t.Fatalf("no warning about the cache file:\n%s", logs.String())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	select {
	case <-a.Ready():
	case err := <-done:
		t.Fatalf("agent stopped: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("Workload API not ready after a minute")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}
