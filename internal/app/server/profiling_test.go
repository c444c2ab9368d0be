package server_test

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/app/server"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/inproc"
)

// TestProfilingWired: profiling_* run as a component of the server: pprof
// on a loopback port while it runs (closed once it stops), dumps into the
// directory.
func TestProfilingWired(t *testing.T) {
	dir := testutil.ShortTempDir(t)
	cfg := testConfig(t, dir)
	port, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Profiling = config.Profiling{Enabled: true, Port: port, Freq: time.Second, Names: []string{"goroutine"}}
	dumps := filepath.Join(dir, "profiles")
	srv := inproc.RunServer(t, cfg, nil, server.Options{ProfilingDir: dumps})

	var addr net.Addr
	if err := testutil.Poll(30*time.Second, 10*time.Millisecond, func() (bool, error) {
		addr = srv.Srv.ProfilingAddr()
		return addr != nil, nil
	}); err != nil {
		t.Fatal("the pprof listener never came up")
	}
	if a := addr.(*net.TCPAddr); !a.IP.IsLoopback() || a.Port != port {
		t.Fatalf("pprof listens on %s, want loopback port %d", a, port)
	}
	resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/heap", addr))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /debug/pprof/heap: %s", resp.Status)
	}
	if err := testutil.Poll(60*time.Second, 20*time.Millisecond, func() (bool, error) {
		ents, _ := os.ReadDir(dumps)
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), "_server_goroutine.pb.gz") {
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		t.Fatalf("no goroutine dump in %s", dumps)
	}

	srv.StopT(t)
	if c, err := net.DialTimeout("tcp", addr.String(), 5*time.Second); err == nil {
		c.Close()
		t.Error("the pprof port is still open after the server stopped")
	}
}

// TestProfilingPortBusy: a profiling_port that cannot be bound stops the
// server with an error naming it.
func TestProfilingPortBusy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := testConfig(t, testutil.ShortTempDir(t))
	cfg.Profiling = config.Profiling{Enabled: true, Port: ln.Addr().(*net.TCPAddr).Port}
	srv, err := inproc.StartServer(cfg, slog.New(slog.DiscardHandler), server.Options{})
	if err == nil {
		err = srv.Stop() // it may have served before the profiler failed
	}
	if err == nil || !strings.Contains(err.Error(), "profiling_port") {
		t.Fatalf("server with a busy profiling_port: %v, want an error naming profiling_port", err)
	}
}
