// Package dev runs the all-in-one developer environment behind
// `sigil-server dev`: a server on SQLite with a self-signed CA, an agent
// attested with a fresh join token, and a registration entry for the
// calling user's uid, then fetches that user's X509-SVID through the
// Workload API with the go-spiffe client, exactly as a workload would.
package dev

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-spiffe/sigil/internal/adminclient"
	agentapp "github.com/sigil-spiffe/sigil/internal/app/agent"
	serverapp "github.com/sigil-spiffe/sigil/internal/app/server"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/datadir"
)

// attestedMarker records, in the agent's data dir, that the dev agent has
// attested once; later runs reuse its persisted SVID instead of a token.
const attestedMarker = "dev-attested"

// Run parses the dev flags and runs the environment until ctx ends (or,
// with -exit, until the workload got its SVID).
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sigil-server dev", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage of sigil-server dev:\n  Runs a server and an agent in one process for local development\n\nFlags:\n")
		fs.PrintDefaults()
	}
	dataDir := fs.String("dataDir", ".sigil-dev", "directory for the server's and agent's state (kept between runs)")
	tdName := fs.String("trustDomain", "example.org", "trust domain")
	port := fs.Int("serverPort", 0, "server TCP port on 127.0.0.1 (0 picks a free one)")
	logLevel := fs.String("logLevel", "WARN", "log level: DEBUG, INFO, WARN, ERROR")
	exit := fs.Bool("exit", false, "exit once the workload has its SVID instead of serving until interrupted")
	// -h prints the usage on stdout; a flag error prints it on stderr.
	var usage bytes.Buffer
	fs.SetOutput(&usage)
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		_, _ = usage.WriteTo(stdout)
		return err
	}
	_, _ = usage.WriteTo(stderr)
	if err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	td, err := spiffeid.TrustDomainFromString(*tdName)
	if err != nil {
		return fmt.Errorf("-trustDomain: %w", err)
	}
	dir, err := filepath.Abs(*dataDir)
	if err != nil {
		return err
	}
	log, err := config.NewLogger(*logLevel, "text", stderr)
	if err != nil {
		return err
	}
	env := &env{td: td, dir: dir, port: *port, log: log, stdout: stdout}
	return env.run(ctx, *exit)
}

// ServerConfig is the configuration of the dev server, the single-machine
// set-up the in-process test harness (internal/testutil/inproc) runs too:
// trust domain td, state under dataDir (SQLite datastore, disk keys), the
// admin API on socketPath, the agent API on 127.0.0.1:port (0: a free
// port), join-token node attestation.
func ServerConfig(td spiffeid.TrustDomain, dataDir, socketPath string, port int) *config.Server {
	c := config.DefaultServer()
	c.TrustDomain = td
	c.DataDir = dataDir
	c.BindAddress = "127.0.0.1"
	c.BindPort = port
	c.SocketPath = socketPath
	c.Plugins = []config.Plugin{
		SQLDataStore(dataDir, ""),
		config.NewPlugin("KeyManager", "disk", map[string]any{"keys_path": filepath.Join(dataDir, "keys")}),
		config.NewPlugin("NodeAttestor", "join_token", nil),
	}
	return c
}

// SQLDataStore is ServerConfig's DataStore "sql": SQLite in
// dataDir/datastore.sqlite3, with sqlite_synchronous set unless "".
func SQLDataStore(dataDir, synchronous string) config.Plugin {
	data := map[string]any{"database_type": "sqlite3", "connection_string": filepath.Join(dataDir, "datastore.sqlite3")}
	if synchronous != "" {
		data["sqlite_synchronous"] = synchronous
	}
	return config.NewPlugin("DataStore", "sql", data)
}

// AgentConfig is the configuration of the dev agent (and of the test
// harness's): trust domain td, state (disk keys) under dataDir, the
// Workload API on socketPath, the server at serverHost:serverPort,
// bootstrapped with the PEM bundle at bundlePath, join-token attestation
// with token ("" once the agent has its SVID), the unix workload attestor.
func AgentConfig(td spiffeid.TrustDomain, dataDir, socketPath, serverHost string, serverPort int, bundlePath, token string) *config.Agent {
	c := config.DefaultAgent()
	c.ServerAddress = serverHost
	c.ServerPort = serverPort
	c.SocketPath = socketPath
	c.TrustDomain = td
	c.DataDir = dataDir
	c.TrustBundlePath = bundlePath
	c.JoinToken = token
	c.Plugins = []config.Plugin{
		config.NewPlugin("NodeAttestor", "join_token", nil),
		config.NewPlugin("KeyManager", "disk", map[string]any{"directory": filepath.Join(dataDir, "keys")}),
		config.NewPlugin("WorkloadAttestor", "unix", nil),
	}
	return c
}

type env struct {
	td     spiffeid.TrustDomain
	dir    string
	port   int
	log    *slog.Logger
	stdout io.Writer
}

func (e *env) serverSocket() string { return filepath.Join(e.dir, "server", "api.sock") }
func (e *env) agentSocket() string  { return filepath.Join(e.dir, "agent", "api.sock") }

func (e *env) run(ctx context.Context, exitWhenDone bool) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	scfg := ServerConfig(e.td, filepath.Join(e.dir, "server"), e.serverSocket(), e.port)
	if err := scfg.Validate(); err != nil {
		return fmt.Errorf("server configuration: %w", err)
	}
	// The server and the agent each check that their data_dir is of this
	// trust domain; the agent's is checked up front too, as the dev
	// environment writes into it before the agent starts.
	if err := agentapp.CheckTrustDomain(filepath.Join(e.dir, "agent"), e.td); err != nil {
		return e.otherTrustDomain(err)
	}
	srv, err := serverapp.New(ctx, scfg, e.log.With("component", "server"), serverapp.Options{})
	if err != nil {
		return e.otherTrustDomain(fmt.Errorf("start server: %w", err))
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Run(gctx) })
	select {
	case <-srv.Ready():
	case <-gctx.Done():
		cancel()
		return errors.Join(g.Wait(), errors.New("server stopped before it was ready"))
	}
	// With -serverPort 0 the server bound a free port: the agent is given
	// that one.
	e.port = srv.TCPAddr().(*net.TCPAddr).Port

	err = e.startAgentAndFetch(gctx, g, exitWhenDone)
	if err != nil || exitWhenDone {
		cancel()
		return errors.Join(err, g.Wait())
	}
	fmt.Fprintln(e.stdout, "Serving; press Ctrl-C to stop.")
	return g.Wait()
}

// otherTrustDomain says what to do when err is a data_dir of another trust
// domain: the dev flag is -dataDir, and it holds both halves.
func (e *env) otherTrustDomain(err error) error {
	var tde *datadir.TrustDomainError
	if !errors.As(err, &tde) {
		return err
	}
	return fmt.Errorf("%s holds a dev environment of trust domain %s (%s), not of %s: pass another -dataDir, or remove %s to start over",
		e.dir, tde.Found, tde.Source, tde.Configured, e.dir)
}

func (e *env) startAgentAndFetch(ctx context.Context, g *errgroup.Group, exitWhenDone bool) error {
	admin, err := adminclient.Dial(e.serverSocket(), e.td)
	if err != nil {
		return err
	}
	defer admin.Close()

	agentDir := filepath.Join(e.dir, "agent")
	if err := os.MkdirAll(agentDir, 0o700); err != nil {
		return err
	}
	agentID, err := spiffeid.FromSegments(e.td, "dev", "agent")
	if err != nil {
		return err
	}
	var token string
	if _, err := os.Stat(filepath.Join(agentDir, attestedMarker)); err != nil {
		if token, err = admin.CreateJoinToken(ctx, agentID, 10*time.Minute); err != nil {
			return err
		}
	}

	u, err := user.Current()
	if err != nil {
		return fmt.Errorf("current user: %w", err)
	}
	workloadID, err := spiffeid.FromSegments(e.td, "workload", u.Username)
	if err != nil {
		// Unusual user names (e.g. with characters not allowed in a path
		// segment) fall back to the uid.
		workloadID, err = spiffeid.FromSegments(e.td, "workload", "uid-"+u.Uid)
		if err != nil {
			return err
		}
	}
	sel := "uid:" + u.Uid
	entry, err := adminclient.NewEntry(workloadID, agentID, "unix:"+sel)
	if err != nil {
		return err
	}
	// A later run finds the entry already there.
	if _, err := admin.CreateEntry(ctx, entry); err != nil && status.Code(err) != codes.AlreadyExists {
		return fmt.Errorf("create workload entry: %w", err)
	}

	pemData, err := admin.BundlePEM(ctx)
	if err != nil {
		return fmt.Errorf("trust bundle: %w", err)
	}
	bundlePath := filepath.Join(agentDir, "bootstrap.pem")
	if err := os.WriteFile(bundlePath, pemData, 0o644); err != nil {
		return fmt.Errorf("write bootstrap bundle: %w", err)
	}

	acfg := AgentConfig(e.td, agentDir, e.agentSocket(), "127.0.0.1", e.port, bundlePath, token)
	if err := acfg.Validate(); err != nil {
		return fmt.Errorf("agent configuration: %w", err)
	}
	a, err := agentapp.New(ctx, acfg, e.log.With("component", "agent"), agentapp.Options{})
	if err != nil {
		return fmt.Errorf("start agent: %w", err)
	}
	g.Go(func() error { return a.Run(ctx) })
	select {
	case <-a.Ready():
	case <-ctx.Done():
		return errors.New("agent stopped before its Workload API was ready")
	}

	fetchCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// The agent attests and syncs in the background; until the entry has
	// reached it the Workload API answers PermissionDenied, so retry.
	var svid *x509svid.SVID
	for {
		svid, err = workloadapi.FetchX509SVID(fetchCtx, workloadapi.WithAddr("unix://"+e.agentSocket()))
		if err == nil {
			break
		}
		select {
		case <-fetchCtx.Done():
			return fmt.Errorf("fetch the workload's X509-SVID: %w", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if token != "" {
		if err := os.WriteFile(filepath.Join(agentDir, attestedMarker), nil, 0o600); err != nil {
			return err
		}
	}

	w := e.stdout
	fmt.Fprintf(w, "Sigil dev environment is up (state in %s).\n\n", e.dir)
	fmt.Fprintf(w, "  Trust domain:         %s\n", e.td.Name())
	fmt.Fprintf(w, "  Server:               127.0.0.1:%d, admin socket %s\n", e.port, e.serverSocket())
	fmt.Fprintf(w, "  Agent:                %s\n", agentID)
	fmt.Fprintf(w, "  Workload API socket:  %s\n", e.agentSocket())
	fmt.Fprintf(w, "  Your SPIFFE ID:       %s (selector unix:%s)\n", svid.ID, sel)
	fmt.Fprintf(w, "  Your X509-SVID:       serial %s, valid until %s\n\n", svid.Certificates[0].SerialNumber, svid.Certificates[0].NotAfter.UTC().Format(time.RFC3339))
	if exitWhenDone {
		// Nothing serves once this returns: no "while this runs" commands.
		fmt.Fprintf(w, "Stopped (-exit): the server and agent are no longer running. Their state stays in %s;\n", e.dir)
		fmt.Fprintf(w, "run again without -exit to keep them serving and try the commands it prints.\n")
		return nil
	}
	fmt.Fprintf(w, "Fetch it yourself (while this runs):\n  go run ./cmd/sigil-agent api fetch x509 -socketPath %s\n", e.agentSocket())
	fmt.Fprintf(w, "List registration entries:\n  go run ./cmd/sigil-server entry show -socketPath %s\n", e.serverSocket())
	return nil
}
