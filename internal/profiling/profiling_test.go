package profiling

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// wait is how long a test waits for a condition (never a timed assertion).
const wait = 30 * time.Second

// start runs p until the test ends and returns its Run's result channel.
func start(t *testing.T, p *Profiler) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	stopped := false
	stop = func() error {
		cancel()
		if stopped {
			return nil
		}
		stopped = true
		select {
		case err := <-done:
			return err
		case <-time.After(wait):
			t.Fatal("profiling: Run did not return after its context ended")
			return nil
		}
	}
	t.Cleanup(func() { _ = stop() })
	select {
	case <-p.Ready():
	case err := <-done:
		stopped = true
		t.Fatalf("Run: %v", err)
	case <-time.After(wait):
		t.Fatal("profiling: not ready")
	}
	return stop
}

func freePort(t *testing.T) int {
	t.Helper()
	port, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

func TestNamesAreConfigs(t *testing.T) {
	if !slices.Equal(Names, config.ProfileNames) {
		t.Fatalf("profiling.Names %v != config.ProfileNames %v", Names, config.ProfileNames)
	}
}

// The pprof endpoints answer over real HTTP on a loopback address, and
// nothing listens on the host's other addresses at that port.
func TestPprofOverHTTP(t *testing.T) {
	p, err := New(Config{Listen: true, Port: freePort(t)})
	if err != nil {
		t.Fatal(err)
	}
	stop := start(t, p)
	addr := p.Addr().(*net.TCPAddr)
	if !addr.IP.IsLoopback() {
		t.Fatalf("pprof listens on %s, not a loopback address", addr)
	}

	body := get(t, fmt.Sprintf("http://%s/debug/pprof/heap", addr))
	if !bytes.HasPrefix(body, []byte{0x1f, 0x8b}) {
		t.Errorf("/debug/pprof/heap: want a gzipped profile, got %q...", body[:min(len(body), 16)])
	}
	if idx := get(t, fmt.Sprintf("http://%s/debug/pprof/", addr)); !bytes.Contains(idx, []byte("goroutine")) {
		t.Errorf("/debug/pprof/ index lists no goroutine profile: %.200s", idx)
	}
	if g := get(t, fmt.Sprintf("http://%s/debug/pprof/goroutine?debug=1", addr)); !bytes.Contains(g, []byte("goroutine profile:")) {
		t.Errorf("/debug/pprof/goroutine?debug=1: %.200s", g)
	}

	// The same port on every non-loopback address of the host is closed.
	ifAddrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	tried := 0
	for _, a := range ifAddrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.IsLoopback() || ipn.IP.IsLinkLocalUnicast() {
			continue
		}
		tried++
		target := net.JoinHostPort(ipn.IP.String(), strconv.Itoa(addr.Port))
		if c, err := net.DialTimeout("tcp", target, 5*time.Second); err == nil {
			c.Close()
			t.Errorf("pprof port reachable on non-loopback address %s", target)
		}
	}
	t.Logf("checked %d non-loopback addresses", tried)

	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if c, err := net.DialTimeout("tcp", addr.String(), 5*time.Second); err == nil {
		c.Close()
		t.Error("pprof port still open after Run returned")
	}
}

// A long /debug/pprof/profile request does not hold up the stop.
func TestStopCutsLongProfileRequest(t *testing.T) {
	p, err := New(Config{Listen: true, Port: freePort(t)})
	if err != nil {
		t.Fatal(err)
	}
	stop := start(t, p)
	reqDone := make(chan struct{})
	go func() {
		defer close(reqDone)
		resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/trace?seconds=3600", p.Addr()))
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	// Wait until the trace runs: starting another one fails then.
	if err := testutil.Poll(wait, 10*time.Millisecond, func() (bool, error) {
		return trace.IsEnabled(), nil
	}); err != nil {
		t.Fatal("the trace request never started")
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	select {
	case <-reqDone:
	case <-time.After(wait):
		t.Fatal("the hour-long trace request outlived Run")
	}
}

func TestPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p, err := New(Config{Listen: true, Port: ln.Addr().(*net.TCPAddr).Port})
	if err != nil {
		t.Fatal(err)
	}
	err = p.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "profiling_port") {
		t.Fatalf("Run on a busy port: %v, want an error naming profiling_port", err)
	}
}

// Every configured profile is written at each dump, with SPIRE's file
// names, into a 0700 directory as 0600 files; cpu and trace record
// between dumps and stop with Run.
func TestPeriodicDumps(t *testing.T) {
	dir := filepath.Join(t.TempDir(), DefaultDir)
	t0 := time.Date(2026, 12, 6, 18, 30, 5, 0, time.Local)
	clk := clock.NewFake(t0)
	p, err := New(Config{Freq: time.Hour, Names: Names, Dir: dir, Tag: "server", Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	stop := start(t, p)
	if p.Addr() != nil {
		t.Errorf("a listener without Listen: %v", p.Addr())
	}
	testutil.CheckMode(t, dir, 0o700)
	// cpu and trace record from the start.
	for _, f := range []string{"server_current_cpu_profile", "server_current_trace_profile"} {
		testutil.CheckMode(t, filepath.Join(dir, f), 0o600)
	}

	var want []string
	for i, ts := range []time.Time{t0.Add(time.Hour), t0.Add(2 * time.Hour)} {
		waitTimer(t, clk)
		clk.Add(time.Hour)
		for _, n := range Names {
			want = append(want, ts.Format(TimestampFormat)+"_server_"+n+".pb.gz")
		}
		sort.Strings(want)
		waitFiles(t, dir, want)
		if i == 0 && ts.Format(TimestampFormat) != "2026-12-06_193005" {
			t.Fatalf("timestamp %s", ts.Format(TimestampFormat))
		}
	}
	for _, f := range want {
		path := filepath.Join(dir, f)
		testutil.CheckMode(t, path, 0o600)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) == 0 {
			t.Errorf("%s is empty", f)
		}
		// runtime/pprof's profiles are gzipped protobufs; a trace is
		// runtime/trace's format (SPIRE names it .pb.gz too).
		if !strings.Contains(f, "_trace") && !bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
			t.Errorf("%s is not gzipped: %q...", f, b[:min(len(b), 16)])
		}
	}

	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	// The unfinished recordings are removed and the recorders stopped.
	waitFiles(t, dir, want)
	if err := pprof.StartCPUProfile(io.Discard); err != nil {
		t.Errorf("CPU profiling still running after Run returned: %v", err)
	} else {
		pprof.StopCPUProfile()
	}
	if trace.IsEnabled() {
		t.Error("tracing still running after Run returned")
	}
}

func waitTimer(t *testing.T, clk *clock.Fake) {
	t.Helper()
	if err := testutil.Poll(wait, time.Millisecond, func() (bool, error) { return clk.Waiters() == 1, nil }); err != nil {
		t.Fatal("the dumper never armed its timer")
	}
}

// waitFiles waits until dir holds exactly names (sorted), no temporary file
// included.
func waitFiles(t *testing.T, dir string, names []string) {
	t.Helper()
	var got []string
	err := testutil.Poll(wait, 10*time.Millisecond, func() (bool, error) {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return false, err
		}
		got = got[:0]
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "server_current_") {
				continue // recording
			}
			got = append(got, e.Name())
		}
		return slices.Equal(got, names), nil
	})
	if err != nil {
		t.Fatalf("%s holds %v, want %v", dir, got, names)
	}
}

// An existing dump directory is tightened to 0700; a symlink or a file in
// its place is refused.
func TestDumpDirectory(t *testing.T) {
	base := t.TempDir()
	loose := filepath.Join(base, "loose")
	if err := os.Mkdir(loose, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(loose, 0o777); err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{Freq: time.Hour, Names: []string{"goroutine"}, Dir: loose, Tag: "server", Clock: clock.NewFake(time.Now())})
	if err != nil {
		t.Fatal(err)
	}
	if err := start(t, p)(); err != nil {
		t.Fatal(err)
	}
	testutil.CheckMode(t, loose, 0o700)

	link := filepath.Join(base, "link")
	if err := os.Symlink(loose, link); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{link, file} {
		p, err := New(Config{Freq: time.Hour, Names: []string{"heap"}, Dir: dir, Tag: "server"})
		if err != nil {
			t.Fatal(err)
		}
		err = p.Run(context.Background())
		if err == nil || !strings.Contains(err.Error(), "is not a directory") || !strings.Contains(err.Error(), "profiling_freq") {
			t.Errorf("Run with dump directory %s: %v, want an error naming profiling_freq", dir, err)
		}
	}
}

func TestNewRejects(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "neither"},
		{Config{Listen: true, Port: 70000}, "port 70000"},
		{Config{Freq: time.Second}, "without profile names"},
		{Config{Freq: -time.Second, Listen: true}, "negative"},
		{Config{Freq: time.Second, Names: []string{"heap", "allocs"}}, `unknown profile "allocs"`},
	} {
		if _, err := New(c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%+v): %v, want %q", c.cfg, err, c.want)
		}
	}
}

func get(t *testing.T, url string) []byte {
	t.Helper()
	code, b := testutil.Get(t, nil, url)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d: %.200s", url, code, b)
	}
	return b
}
