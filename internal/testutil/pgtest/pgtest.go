// Package pgtest runs private PostgreSQL clusters for tests: initdb into a
// temporary directory, then the postmaster as a child of the test binary
// (listening on 127.0.0.1 at a free port and on a unix socket in that
// directory, password authentication for one superuser), and a fresh
// database per test.
//
// One cluster serves a whole test binary when its TestMain uses Main;
// without Main every test that asks gets its own cluster (about 1-2 s to
// start). Each cluster is stopped (fast shutdown) and its directory removed
// when the binary (or the test) ends; the postmaster is SIGKILLed if the
// test binary dies first, and its backends exit with it.
//
// Tests that need PostgreSQL call Require (Cluster, NewDatabase do), which
// skips the test when PostgreSQL's server binaries are missing, except in
// CI (the CI environment variable set and not "false", as .ci/run does),
// where a missing PostgreSQL fails the test: the PostgreSQL half of the
// storage suite never silently skips in CI. The binaries are looked up in
// $SIGIL_PG_BIN, then PATH, then /usr/lib/postgresql/<version>/bin (Debian's
// postgresql package), newest version first.
//
// When the test runs as root the cluster runs as the "postgres" user (initdb
// refuses root), so its directory is created for that user.
//
// Import it only from _test.go files (and test helpers).
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sigil-spiffe/sigil/internal/testutil"
)

// Superuser is the name of the cluster's superuser.
const Superuser = "sigil"

// Options tune a cluster.
type Options struct {
	// Durable keeps PostgreSQL's defaults (fsync, synchronous_commit,
	// full_page_writes on), for benchmarks. Test clusters turn them off:
	// nothing needs to survive a power failure.
	Durable bool
	// Settings are extra postgres -c settings (name -> value).
	Settings map[string]string
}

// Cluster is a running PostgreSQL cluster.
type Cluster struct {
	// Dir holds the data directory (data/), the unix socket and the log.
	Dir string
	// Port is the TCP port on 127.0.0.1.
	Port int
	// Password is the superuser's password.
	Password string
	// Version is the server's major version ("15").
	Version string

	cmd  *exec.Cmd
	done chan struct{}
	err  error // valid after done
	log  string

	dbSeq atomic.Int64

	tmplMu sync.Mutex
	tmpls  map[string]*template
}

type template struct {
	once sync.Once
	name string
	err  error
}

// Require skips t when PostgreSQL's server binaries are missing, or fails
// it when the CI environment variable is set (and not "false").
func Require(t testing.TB) {
	t.Helper()
	if _, err := binDir(); err != nil {
		if ci := os.Getenv("CI"); ci != "" && ci != "false" {
			t.Fatalf("%v (CI is set: PostgreSQL tests must run; install the postgresql package)", err)
		}
		t.Skipf("%v (install the postgresql package, or set SIGIL_PG_BIN to its bin directory)", err)
	}
}

var bin struct {
	once sync.Once
	dir  string
	err  error
}

// binDir finds the directory holding initdb and postgres.
func binDir() (string, error) {
	bin.once.Do(func() {
		has := func(d string) bool {
			for _, b := range []string{"initdb", "postgres"} {
				if fi, err := os.Stat(filepath.Join(d, b)); err != nil || fi.IsDir() {
					return false
				}
			}
			return true
		}
		if d := os.Getenv("SIGIL_PG_BIN"); d != "" {
			if has(d) {
				bin.dir = d
			} else {
				bin.err = fmt.Errorf("pgtest: SIGIL_PG_BIN=%s has no initdb and postgres", d)
			}
			return
		}
		if p, err := exec.LookPath("initdb"); err == nil && has(filepath.Dir(p)) {
			bin.dir = filepath.Dir(p)
			return
		}
		dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
		sort.Slice(dirs, func(i, j int) bool {
			vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
			vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
			return vi > vj
		})
		for _, d := range dirs {
			if has(d) {
				bin.dir = d
				return
			}
		}
		bin.err = errors.New("pgtest: PostgreSQL server binaries (initdb, postgres) not found")
	})
	return bin.dir, bin.err
}

// shared is the cluster Main starts lazily for Shared.
var shared struct {
	enabled bool
	once    sync.Once
	c       *Cluster
	err     error
}

// Main runs a test binary's tests with one cluster shared by all of them
// (started on first use) and stops it afterwards; then it runs after (e.g.
// testutil.Cleanup). Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
func Main(m *testing.M, after ...func()) int {
	shared.enabled = true
	code := m.Run()
	if shared.c != nil {
		if err := shared.c.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
	for _, f := range after {
		f()
	}
	return code
}

// Shared returns the test binary's cluster when TestMain uses Main (started
// on first use), else a new cluster for t.
func Shared(t testing.TB) *Cluster {
	t.Helper()
	Require(t)
	if !shared.enabled {
		return Start(t, Options{})
	}
	shared.once.Do(func() { shared.c, shared.err = StartCluster(Options{}) })
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.c
}

// NewDatabase creates an empty database on the shared cluster (see Shared)
// and returns a connection string for it; the database is dropped when t
// ends.
func NewDatabase(t testing.TB) string {
	t.Helper()
	return Shared(t).NewDatabase(t)
}

// DataStore is a server's DataStore "sql" plugin on a new database of the
// shared cluster (see NewDatabase), for testutil.ServerConfig.DataStore.
func DataStore(t testing.TB) *testutil.Plugin {
	t.Helper()
	return Shared(t).DataStore(t)
}

// DataStore is a server's DataStore "sql" plugin on a new database of c.
func (c *Cluster) DataStore(t testing.TB) *testutil.Plugin {
	t.Helper()
	return &testutil.Plugin{Type: "DataStore", Name: "sql", Data: map[string]any{
		"database_type":     "postgres",
		"connection_string": c.NewDatabase(t),
	}}
}

// Start starts a cluster that is stopped when t ends.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	Require(t)
	c, err := StartCluster(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// StartCluster initializes and starts a cluster; the caller stops it.
func StartCluster(o Options) (c *Cluster, err error) {
	bd, err := binDir()
	if err != nil {
		return nil, err
	}
	// The socket lives in Dir: keep the path short (sun_path is 108 bytes).
	dir, err := os.MkdirTemp(shortTempRoot(), "pg")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(dir)
		}
	}()
	cred, err := runAs(dir)
	if err != nil {
		return nil, err
	}
	pw := make([]byte, 16)
	if _, err := rand.Read(pw); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	c = &Cluster{Dir: dir, Password: hex.EncodeToString(pw), log: filepath.Join(dir, "postgres.log"), done: make(chan struct{})}
	pwfile := filepath.Join(dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(c.Password+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if err := chown(pwfile, cred); err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(bd, "initdb"), "-D", data, "-U", Superuser, "--pwfile", pwfile,
		"--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-instructions")
	if !o.Durable {
		initdb.Args = append(initdb.Args, "--no-sync")
	}
	initdb.Dir = dir
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("pgtest: initdb: %v\n%s", err, out)
	}
	_ = os.Remove(pwfile)
	if b, err := os.ReadFile(filepath.Join(data, "PG_VERSION")); err == nil {
		c.Version = strings.TrimSpace(string(b))
	}

	settings := map[string]string{
		"listen_addresses":        "127.0.0.1",
		"unix_socket_directories": dir,
		"max_connections":         "300",
		"shared_buffers":          "32MB",
		"logging_collector":       "off",
		"log_min_messages":        "warning",
		"log_min_error_statement": "panic", // failed statements are the tests' business
	}
	if !o.Durable {
		settings["fsync"] = "off"
		settings["synchronous_commit"] = "off"
		settings["full_page_writes"] = "off"
	}
	for k, v := range o.Settings {
		settings[k] = v
	}
	// A port picked free can be taken before the postmaster binds it:
	// try a few.
	for attempt := 0; ; attempt++ {
		port, err := testutil.FreePort()
		if err != nil {
			return nil, err
		}
		settings["port"] = strconv.Itoa(port)
		err = c.start(bd, data, cred, settings)
		if err == nil {
			c.Port = port
			return c, nil
		}
		if attempt == 4 || !c.portTaken() {
			return nil, err
		}
	}
}

func (c *Cluster) start(bd, data string, cred *syscall.Credential, settings map[string]string) error {
	args := []string{"-D", data}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "-c", k+"="+settings[k])
	}
	logf, err := os.OpenFile(c.log, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(bd, "postgres"), args...)
	cmd.Dir = c.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// The postmaster is our child (not daemonized by pg_ctl), so it dies
	// with the test binary; its backends notice and exit.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pgtest: start postgres: %w", err)
	}
	c.cmd, c.done = cmd, make(chan struct{})
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	port, _ := strconv.Atoi(settings["port"])
	c.Port = port
	for {
		conn, err := pgx.Connect(ctx, c.ConnString("postgres"))
		if err == nil {
			var v string
			err = conn.QueryRow(ctx, "SHOW server_version").Scan(&v)
			conn.Close(ctx)
			if err == nil {
				return nil
			}
		}
		select {
		case <-c.done:
			return fmt.Errorf("pgtest: postgres exited during start-up: %v\n%s", c.err, c.Log())
		case <-ctx.Done():
			_ = c.Stop()
			return fmt.Errorf("pgtest: postgres not accepting connections after 60s: %v\n%s", err, c.Log())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// portTaken reports whether the last start failed on its port.
func (c *Cluster) portTaken() bool {
	return strings.Contains(c.Log(), "could not bind") || strings.Contains(c.Log(), "Address already in use")
}

// Log returns the server log so far.
func (c *Cluster) Log() string {
	b, _ := os.ReadFile(c.log)
	return string(b)
}

// Stop shuts the cluster down (fast shutdown: open sessions are ended)
// and removes its directory.
func (c *Cluster) Stop() error {
	var err error
	if c.cmd != nil && c.cmd.Process != nil {
		_ = c.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-c.done:
		case <-time.After(30 * time.Second):
			_ = c.cmd.Process.Kill()
			<-c.done
			err = errors.New("pgtest: postgres did not stop within 30s; killed")
		}
	}
	if rerr := os.RemoveAll(c.Dir); rerr != nil && err == nil {
		err = rerr
	}
	return err
}

// ConnString is a connection string (key=value form, as SPIRE's
// connection_string examples) for database db as the superuser over TCP.
func (c *Cluster) ConnString(db string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=disable", c.Port, Superuser, c.Password, db)
}

// SocketConnString is ConnString over the cluster's unix socket.
func (c *Cluster) SocketConnString(db string) string {
	return fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=%s sslmode=disable", c.Dir, c.Port, Superuser, c.Password, db)
}

// Exec runs statements (simple protocol, several allowed) on database db.
func (c *Cluster) Exec(ctx context.Context, db, sql string) error {
	conn, err := pgx.Connect(ctx, c.ConnString(db))
	if err != nil {
		return fmt.Errorf("pgtest: connect to %s: %w", db, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}

// NewDatabase creates an empty database (from template0) and returns its
// connection string; the database is dropped when t ends.
func (c *Cluster) NewDatabase(t testing.TB) string {
	t.Helper()
	return c.ConnString(c.CreateDatabase(t, "template0"))
}

// CreateDatabase creates a database copied from template (which must have
// no open connections) and returns its name; it is dropped when t ends.
func (c *Cluster) CreateDatabase(t testing.TB, template string) string {
	t.Helper()
	name := fmt.Sprintf("t%d_%d", os.Getpid(), c.dbSeq.Add(1))
	ctx := context.Background()
	if err := c.Exec(ctx, "postgres", fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s", pgx.Identifier{name}.Sanitize(), pgx.Identifier{template}.Sanitize())); err != nil {
		t.Fatalf("%v\n%s", err, c.Log())
	}
	t.Cleanup(func() {
		if err := c.Exec(context.Background(), "postgres", fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", pgx.Identifier{name}.Sanitize())); err != nil {
			select {
			case <-c.done: // the cluster is gone already (a per-test cluster stopped first)
			default:
				t.Errorf("drop database %s: %v", name, err)
			}
		}
	})
	return name
}

// Template returns the name of a database prepared once per cluster by
// init (given its connection string; init must close its connections),
// to copy with CreateDatabase: a schema migrated once instead of per test.
// key names it (letters, digits, '_'). Templates live as long as the
// cluster.
func (c *Cluster) Template(t testing.TB, key string, init func(connString string) error) string {
	t.Helper()
	c.tmplMu.Lock()
	if c.tmpls == nil {
		c.tmpls = map[string]*template{}
	}
	tm := c.tmpls[key]
	if tm == nil {
		tm = &template{name: "tmpl_" + key}
		c.tmpls[key] = tm
	}
	c.tmplMu.Unlock()
	tm.once.Do(func() {
		ctx := context.Background()
		if tm.err = c.Exec(ctx, "postgres", fmt.Sprintf("CREATE DATABASE %s TEMPLATE template0", pgx.Identifier{tm.name}.Sanitize())); tm.err != nil {
			return
		}
		if err := init(c.ConnString(tm.name)); err != nil {
			tm.err = fmt.Errorf("pgtest: prepare template %s: %w", key, err)
		}
	})
	if tm.err != nil {
		t.Fatal(tm.err)
	}
	return tm.name
}

// shortTempRoot is the system temporary directory, or /tmp when that path
// is long (the socket path must fit in 108 bytes) or when running as root
// (the cluster runs as postgres, who must reach the directory: a TMPDIR
// under /root would not do).
func shortTempRoot() string {
	d := os.TempDir()
	if len(d) > 40 || os.Geteuid() == 0 {
		if fi, err := os.Stat("/tmp"); err == nil && fi.IsDir() {
			return "/tmp"
		}
	}
	return d
}

// runAs returns the credential to run PostgreSQL with (nil: as ourselves)
// and gives dir to that user. initdb and postgres refuse to run as root.
func runAs(dir string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgtest: running as root needs a postgres user to run PostgreSQL as: %w", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("pgtest: user postgres has uid %q gid %q", u.Uid, u.Gid)
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}
	if err := chown(dir, cred); err != nil {
		return nil, err
	}
	return cred, nil
}

func chown(path string, cred *syscall.Credential) error {
	if cred == nil {
		return nil
	}
	if err := os.Chown(path, int(cred.Uid), int(cred.Gid)); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}
