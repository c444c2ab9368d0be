package telemetry

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// TestServerProfiling: a sigil-server with SPIRE's profiling keys serves
// net/http/pprof on loopback at profiling_port and writes the
// profiling_names profiles every profiling_freq seconds into .profiles in
// its working directory (0700, files 0600), and stops cleanly with them.
func TestServerProfiling(t *testing.T) {
	port, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	s := testutil.NewServer(t, testutil.ServerConfig{
		ProfilingPort: port, ProfilingFreq: 1, ProfilingNames: []string{"heap", "goroutine", "cpu"},
	})
	s.WorkDir = work
	s.Start(t)

	_, line, _ := strings.Cut(s.Proc.WaitForLog(t, "Serving net/http/pprof", 30*time.Second), "Serving net/http/pprof")
	line, _, _ = strings.Cut(line, "\n")
	_, addr, _ := strings.Cut(line, "address=")
	addr, _, _ = strings.Cut(addr, " ")
	host, _, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		t.Fatalf("pprof listens on %q, want a loopback address (log: %s)", addr, line)
	}

	resp, err := http.Get(fmt.Sprintf("http://localhost:%d/debug/pprof/heap", port))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || !bytes.HasPrefix(body, []byte{0x1f, 0x8b}) {
		t.Fatalf("GET /debug/pprof/heap: %s, %d bytes, %v", resp.Status, len(body), err)
	}

	// SPIRE's names: <yyyy-mm-dd_hhmmss>_server_<name>.pb.gz, in
	// .profiles of the working directory (logged as an absolute path).
	dir := filepath.Join(work, ".profiles")
	resolved, err := filepath.EvalSymlinks(work) // what the process's getcwd says
	if err != nil {
		t.Fatal(err)
	}
	s.Proc.WaitForLog(t, fmt.Sprintf("directory=%s ", filepath.Join(resolved, ".profiles")), 30*time.Second)
	var files []string
	if err := testutil.Poll(60*time.Second, 50*time.Millisecond, func() (bool, error) {
		files = nil
		ents, err := os.ReadDir(dir)
		if err != nil {
			return false, nil
		}
		seen := map[string]bool{}
		for _, e := range ents {
			for _, n := range []string{"heap", "goroutine", "cpu"} {
				if strings.HasSuffix(e.Name(), "_server_"+n+".pb.gz") {
					seen[n] = true
					files = append(files, e.Name())
				}
			}
		}
		return len(seen) == 3, nil
	}); err != nil {
		t.Fatalf("%s holds %v, want a heap, goroutine and cpu dump", dir, files)
	}
	testutil.CheckMode(t, dir, 0o700)
	for _, f := range files {
		testutil.CheckMode(t, filepath.Join(dir, f), 0o600)
	}

	s.Stop(t)
	if _, err := os.Stat(filepath.Join(dir, "server_current_cpu_profile")); !os.IsNotExist(err) {
		t.Errorf("the unfinished CPU recording is left after stop: %v", err)
	}
}
