// Package profiling is sigil-server's side of SPIRE's profiling_* keys:
// the net/http/pprof endpoints on a loopback port, and the periodic dumps
// of named runtime profiles to a directory, with spire-server's file names.
//
// It is linked by sigil-server only: net/http/pprof would take sigil-agent
// past its binary size budget (cmd/sigil-agent/deps_test.go forbids it).
package profiling

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"runtime"
	rtpprof "runtime/pprof"
	"runtime/trace"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/sigil-spiffe/sigil/internal/clock"
)

// Names are the profiles Config.Names may hold: SPIRE's set. "cpu" and
// "trace" record continuously and are cut at each dump; the others are
// snapshots of runtime/pprof's profile of that name.
var Names = []string{"goroutine", "threadcreate", "heap", "block", "mutex", "trace", "cpu"}

// TimestampFormat is the dump files' timestamp (local time), as SPIRE's.
const TimestampFormat = "2006-01-02_150405"

// DefaultDir is where spire-server writes its dumps: .profiles in its
// working directory.
const DefaultDir = ".profiles"

// shutdownTimeout bounds the wait for in-flight pprof requests (a CPU
// profile may run for its `seconds`) before their connections are closed.
const shutdownTimeout = 500 * time.Millisecond

// Config is what profiling_* configure.
type Config struct {
	// Listen serves net/http/pprof under /debug/pprof/ on localhost:Port.
	Listen bool
	// Port is the pprof port; 0 picks a free one (Addr tells which).
	Port int
	// Freq is the time between dumps; 0 writes none.
	Freq time.Duration
	// Names are the profiles each dump writes (Names), in this order.
	Names []string
	// Dir receives the dumps (DefaultDir when empty): created 0700, files
	// 0600, named <timestamp>_<Tag>_<name>.pb.gz.
	Dir string
	// Tag is the dump files' middle part: "server", as SPIRE's.
	Tag string
	// Clock times the dumps (the real clock when nil).
	Clock clock.Clock
	Log   *slog.Logger
}

// Profiler is the component: Run serves and dumps until its context ends.
type Profiler struct {
	cfg   Config
	clk   clock.Clock
	log   *slog.Logger
	ready chan struct{}

	mu   sync.Mutex
	addr net.Addr
}

// New checks cfg; Run binds and starts.
func New(cfg Config) (*Profiler, error) {
	if !cfg.Listen && cfg.Freq <= 0 {
		return nil, errors.New("profiling: neither a pprof listener nor dumps are configured")
	}
	if cfg.Listen && (cfg.Port < 0 || cfg.Port > 65535) {
		return nil, fmt.Errorf("profiling: port %d out of range", cfg.Port)
	}
	if cfg.Freq < 0 {
		return nil, fmt.Errorf("profiling: negative dump period %s", cfg.Freq)
	}
	if cfg.Freq > 0 && len(cfg.Names) == 0 {
		return nil, errors.New("profiling: dumps configured without profile names")
	}
	var names []string
	for _, n := range cfg.Names {
		if !slices.Contains(Names, n) {
			return nil, fmt.Errorf("profiling: unknown profile %.64q", n)
		}
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	cfg.Names = names
	if cfg.Dir == "" {
		cfg.Dir = DefaultDir
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	return &Profiler{cfg: cfg, clk: clock.OrReal(cfg.Clock), log: log, ready: make(chan struct{})}, nil
}

// Ready is closed once the pprof listener is bound (at once without one)
// and the dump directory is prepared.
func (p *Profiler) Ready() <-chan struct{} { return p.ready }

// Addr is the pprof listener's address (nil before Ready or without one).
func (p *Profiler) Addr() net.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addr
}

// Run serves pprof and writes the dumps until ctx ends. A port that cannot
// be bound, or a dump directory that cannot be made or is not private, is
// an error (the server stops); a failed dump is logged and retried at the
// next one.
func (p *Profiler) Run(ctx context.Context) error {
	if runtime.MemProfileRate == 0 {
		p.log.Warn("Memory profiles are disabled (runtime.MemProfileRate is 0): heap profiles will be empty")
	}
	var ln net.Listener
	if p.cfg.Listen {
		var err error
		if ln, err = listenLoopback(p.cfg.Port); err != nil {
			return err
		}
		p.mu.Lock()
		p.addr = ln.Addr()
		p.mu.Unlock()
	}
	var d *dumper
	if p.cfg.Freq > 0 {
		var err error
		if d, err = newDumper(p.cfg, p.log); err != nil {
			if ln != nil {
				ln.Close()
			}
			return err
		}
	}
	close(p.ready)
	g, ctx := errgroup.WithContext(ctx)
	if ln != nil {
		p.log.Info("Serving net/http/pprof", "address", ln.Addr().String())
		g.Go(func() error { return serve(ctx, ln) })
	}
	if d != nil {
		dir := p.cfg.Dir
		if abs, err := filepath.Abs(dir); err == nil {
			dir = abs // .profiles is relative to the working directory
		}
		p.log.Info("Writing profiles", "directory", dir, "every", p.cfg.Freq.String(), "profiles", p.cfg.Names)
		g.Go(func() error { return d.run(ctx, p.clk, p.cfg.Freq) })
	}
	return g.Wait()
}

// listenLoopback binds localhost:port, as SPIRE, and refuses an address
// that is not loopback (a hosts file mapping localhost elsewhere).
func listenLoopback(port int) (net.Listener, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort("localhost", strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("profiling_port: %w", err)
	}
	if a, ok := ln.Addr().(*net.TCPAddr); !ok || !a.IP.IsLoopback() {
		ln.Close()
		return nil, fmt.Errorf("profiling_port: localhost resolved to %s, which is not a loopback address; pprof is served on loopback only", ln.Addr())
	}
	return ln, nil
}

// Handler is the pprof endpoints: /debug/pprof/ (index and every named
// profile), cmdline, profile (CPU), symbol and trace.
func Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

func serve(ctx context.Context, ln net.Listener) error {
	// No write timeout: /debug/pprof/profile and trace stream for their
	// `seconds` (as SPIRE's).
	srv := &http.Server{Handler: Handler(), ReadHeaderTimeout: 10 * time.Second}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			_ = srv.Close() // cuts a long profile request: stop promptly
		}
	}()
	err := srv.Serve(ln)
	<-stopped
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("profiling: pprof listener: %w", err)
	}
	return nil
}

// dumper writes the profiles into dir. cpu and trace record into a
// <tag>_current_<name>_profile file between dumps (SPIRE's scheme); each
// dump renames it to its final name and starts the next.
type dumper struct {
	dir, tag string
	names    []string
	log      *slog.Logger

	cpu, trace *os.File // recording, nil when not
}

func newDumper(cfg Config, log *slog.Logger) (*dumper, error) {
	if err := privateDir(cfg.Dir); err != nil {
		return nil, fmt.Errorf("profiling_freq: dump directory: %w", err)
	}
	d := &dumper{dir: cfg.Dir, tag: cfg.Tag, names: cfg.Names, log: log}
	// A recorder that cannot start (one already runs in this process:
	// a /debug/pprof/profile request) is retried at each dump.
	d.startRecorders()
	return d, nil
}

func (d *dumper) run(ctx context.Context, clk clock.Clock, freq time.Duration) error {
	defer d.stopRecorders()
	next := clk.Now().Add(freq)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-clk.After(next.Sub(clk.Now())):
		}
		now := clk.Now()
		d.dump(now.Format(TimestampFormat))
		// A fixed schedule, as SPIRE's ticker; one that fell behind
		// (a slow dump) skips to now.
		next = next.Add(freq)
		if next.Before(now) {
			next = now.Add(freq)
		}
	}
}

// dump writes one file per name; a failure is logged and the rest go on.
func (d *dumper) dump(ts string) {
	for _, name := range d.names {
		if err := d.dumpOne(ts, name); err != nil {
			d.log.Warn("Could not write profile", "profile", name, "error", err)
		}
	}
}

func (d *dumper) dumpOne(ts, name string) error {
	final := filepath.Join(d.dir, ts+"_"+d.tag+"_"+name+".pb.gz")
	switch name {
	case "cpu", "trace":
		f := d.recording(name)
		if f == nil {
			d.startRecorder(name)
			return fmt.Errorf("%s was not recording (started now, written at the next dump)", name)
		}
		d.stopRecorder(name)
		err := os.Rename(f.Name(), final)
		d.startRecorder(name)
		return err
	}
	prof := rtpprof.Lookup(name)
	if prof == nil {
		return fmt.Errorf("no runtime profile %q", name)
	}
	if name == "heap" {
		runtime.GC() // up-to-date figures, as SPIRE
	}
	return writeFile(d.dir, final, func(w io.Writer) error { return prof.WriteTo(w, 0) })
}

func (d *dumper) recording(name string) *os.File {
	if name == "cpu" {
		return d.cpu
	}
	return d.trace
}

func (d *dumper) startRecorders() {
	for _, n := range []string{"cpu", "trace"} {
		if slices.Contains(d.names, n) {
			d.startRecorder(n)
		}
	}
}

func (d *dumper) stopRecorders() {
	for _, n := range []string{"cpu", "trace"} {
		if f := d.recording(n); f != nil {
			d.stopRecorder(n)
			os.Remove(f.Name()) // an unfinished period is dropped, as SPIRE
		}
	}
}

// startRecorder starts the cpu or trace recording into a fresh private
// file; on failure (another recording of that kind runs in the process)
// it logs and leaves it stopped.
func (d *dumper) startRecorder(name string) {
	path := filepath.Join(d.dir, d.tag+"_current_"+name+"_profile")
	_ = os.Remove(path) // a previous run's leftover
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		d.log.Warn("Could not start recording profile", "profile", name, "error", err)
		return
	}
	if name == "cpu" {
		err = rtpprof.StartCPUProfile(f)
	} else {
		err = trace.Start(f)
	}
	if err != nil {
		f.Close()
		os.Remove(path)
		d.log.Warn("Could not start recording profile", "profile", name, "error", err)
		return
	}
	if name == "cpu" {
		d.cpu = f
	} else {
		d.trace = f
	}
}

// stopRecorder stops the recording this dumper started and closes its file.
func (d *dumper) stopRecorder(name string) {
	if name == "cpu" {
		rtpprof.StopCPUProfile()
		d.cpu.Close()
		d.cpu = nil
		return
	}
	trace.Stop()
	d.trace.Close()
	d.trace = nil
}

// writeFile writes final through a private temporary file in dir, so a
// reader never sees half a profile.
func writeFile(dir, final string, write func(io.Writer) error) error {
	f, err := os.CreateTemp(dir, ".tmp-*") // 0600
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a successful rename: already gone
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), final)
}

// privateDir makes dir (0700) if missing; an existing one must be a
// directory (not a symlink) owned by this process's user, and is
// tightened to 0700.
func privateDir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s is owned by uid %d, not by this process's user (uid %d)", dir, st.Uid, os.Geteuid())
	}
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return err
		}
	}
	return nil
}
