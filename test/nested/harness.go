// Package nested brings up real Sigil servers and agents in one process
// (on internal/testutil/inproc) to exercise nested (hierarchical)
// deployments: a root server, agents attested to it, downstream ("site")
// servers whose UpstreamAuthority "spire" uses a co-located root-side
// agent's Workload API, and device agents attested to the sites. It names
// every server and agent in logs and errors and lets a test wait for a log
// message. It is shared by the tests here and by bench/nested.
package nested

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/sigil-spiffe/sigil/internal/adminclient"
	agentapp "github.com/sigil-spiffe/sigil/internal/app/agent"
	serverapp "github.com/sigil-spiffe/sigil/internal/app/server"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/testutil"
	"github.com/sigil-spiffe/sigil/internal/testutil/inproc"
)

// TrustDomain is the trust domain of every tier (nested servers share it).
var TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")

// Server is one running sigil-server (inproc) named in logs and errors.
type Server struct {
	*inproc.Server
	Name string
	Log  *LogWatch

	tb testing.TB
}

// ServerOption edits a server configuration before start.
type ServerOption func(*config.Server)

// NewServerConfig returns a SQLite/disk-keys server configuration in dir
// listening on 127.0.0.1:port, with join-token attestation. Port 0 binds a
// free port (StartServer records it in the configuration).
func NewServerConfig(dir string, port int, opts ...ServerOption) *config.Server {
	c := inproc.ServerConfig(TrustDomain, dir, filepath.Join(dir, "api.sock"), port)
	for _, o := range opts {
		o(c)
	}
	return c
}

// StartServer starts a server and waits until it serves. Stop (or test
// cleanup) ends it. A BindPort of 0 in cfg is set to the port bound, so
// that a restart from cfg listens where agents and downstream servers
// already point.
func StartServer(tb testing.TB, name string, cfg *config.Server) *Server {
	tb.Helper()
	lw := NewLogWatch(os.Getenv("SIGIL_TEST_LOG") != "", name)
	srv, err := inproc.StartServer(cfg, slog.New(lw), serverapp.Options{})
	if err != nil {
		tb.Fatalf("%s: %v", name, err)
	}
	cfg.BindPort = srv.Port()
	s := &Server{Server: srv, Name: name, Log: lw, tb: tb}
	tb.Cleanup(s.Stop)
	return s
}

// Stop stops the server and waits for it to exit (idempotent).
func (s *Server) Stop() {
	if err := s.Server.Stop(); err != nil {
		s.tb.Errorf("%s: %v", s.Name, err)
	}
}

func (s *Server) admin() *adminclient.Client { return s.Admin(s.tb).Client }

// JoinToken creates a join token whose agent gets SPIFFE ID
// spiffe://<td>/<agentPath>.
func (s *Server) JoinToken(ctx context.Context, agentPath string) (string, error) {
	tok, err := s.admin().CreateJoinToken(ctx, spiffeid.RequireFromPath(TrustDomain, agentPath), testutil.JoinTokenTTL)
	if err != nil {
		return "", fmt.Errorf("%s: %w", s.Name, err)
	}
	return tok, nil
}

// CreateEntry registers spiffeIDPath under parentPath with one unix:uid
// selector for this process's uid.
func (s *Server) CreateEntry(ctx context.Context, spiffeIDPath, parentPath string, downstream bool) error {
	e, err := adminclient.NewEntry(spiffeid.RequireFromPath(TrustDomain, spiffeIDPath), spiffeid.RequireFromPath(TrustDomain, parentPath),
		"unix:uid:"+strconv.Itoa(os.Getuid()))
	if err != nil {
		return err
	}
	e.Downstream = downstream
	if _, err := s.admin().CreateEntry(ctx, e); err != nil {
		return fmt.Errorf("%s: %w", s.Name, err)
	}
	return nil
}

// Bundle returns the server's own trust bundle (X.509 and JWT).
func (s *Server) Bundle(ctx context.Context) (*x509bundle.Bundle, *jwtbundle.Bundle, error) {
	b, err := s.admin().SPIFFEBundle(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", s.Name, err)
	}
	return b.X509Bundle(), b.JWTBundle(), nil
}

// Agent is one running sigil-agent.
type Agent struct {
	Name   string
	Socket string
	ID     spiffeid.ID

	tb testing.TB
	a  *inproc.Agent
}

// StartAgent attests a new agent (spiffe://<td>/<agentPath>) to srv with a
// join token, bootstrapped with srv's current bundle, and waits until its
// Workload API socket serves.
func StartAgent(tb testing.TB, ctx context.Context, name, dir string, srv *Server, agentPath string) *Agent {
	tb.Helper()
	token, err := srv.JoinToken(ctx, agentPath)
	if err != nil {
		tb.Fatal(err)
	}
	c := srv.AgentConfig(tb, dir, token)
	lw := NewLogWatch(os.Getenv("SIGIL_TEST_LOG") != "", name)
	a, err := inproc.StartAgent(c, slog.New(lw), agentapp.Options{})
	if err != nil {
		tb.Fatalf("%s: %v", name, err)
	}
	ag := &Agent{Name: name, Socket: c.SocketPath, ID: spiffeid.RequireFromPath(TrustDomain, agentPath), tb: tb, a: a}
	tb.Cleanup(ag.Stop)
	return ag
}

// Stop stops the agent (idempotent).
func (a *Agent) Stop() {
	if err := a.a.Stop(); err != nil {
		a.tb.Errorf("%s: %v", a.Name, err)
	}
}

// Addr is the agent's Workload API address for go-spiffe.
func (a *Agent) Addr() string { return "unix://" + a.Socket }

// FetchX509SVID fetches this process's X509-SVID from the agent, retrying
// until it is served (the entry may still be on its way) and accept
// returns true for it, or until ctx ends.
func (a *Agent) FetchX509SVID(ctx context.Context, accept func(*x509svid.SVID) bool) (*x509svid.SVID, error) {
	var last error
	for {
		svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(a.Addr()))
		if err == nil && (accept == nil || accept(svid)) {
			return svid, nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: fetch X509-SVID: %w (last error: %v)", a.Name, ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// LogWatch is a slog.Handler that can print records and lets a test wait
// for a message.
type LogWatch struct {
	name  string
	print bool
	attrs []slog.Attr
	st    *logState
}

type logState struct {
	mu      sync.Mutex
	waiters []logWaiter
	out     io.Writer
}

type logWaiter struct {
	substr string
	ch     chan struct{}
}

// NewLogWatch returns a handler; with print, records go to stderr.
func NewLogWatch(print bool, name string) *LogWatch {
	return &LogWatch{name: name, print: print, st: &logState{out: os.Stderr}}
}

// Enabled implements slog.Handler.
func (l *LogWatch) Enabled(context.Context, slog.Level) bool { return true }

// Handle implements slog.Handler.
func (l *LogWatch) Handle(_ context.Context, r slog.Record) error {
	st := l.st
	st.mu.Lock()
	defer st.mu.Unlock()
	kept := st.waiters[:0]
	for _, w := range st.waiters {
		if strings.Contains(r.Message, w.substr) {
			close(w.ch)
		} else {
			kept = append(kept, w)
		}
	}
	st.waiters = kept
	if l.print && r.Level >= slog.LevelInfo {
		var b strings.Builder
		fmt.Fprintf(&b, "%s %-5s [%s] %s", r.Time.Format("15:04:05.000"), r.Level, l.name, r.Message)
		for _, a := range l.attrs {
			fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		}
		r.Attrs(func(a slog.Attr) bool {
			fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
			return true
		})
		fmt.Fprintln(st.out, b.String())
	}
	return nil
}

// WithAttrs implements slog.Handler.
func (l *LogWatch) WithAttrs(as []slog.Attr) slog.Handler {
	c := *l
	c.attrs = append(append([]slog.Attr(nil), l.attrs...), as...)
	return &c
}

// WithGroup implements slog.Handler (groups are flattened).
func (l *LogWatch) WithGroup(string) slog.Handler { return l }

// Wait returns a channel closed when a record whose message contains
// substr is logged after this call.
func (l *LogWatch) Wait(substr string) <-chan struct{} {
	l.st.mu.Lock()
	defer l.st.mu.Unlock()
	ch := make(chan struct{})
	l.st.waiters = append(l.st.waiters, logWaiter{substr: substr, ch: ch})
	return ch
}
