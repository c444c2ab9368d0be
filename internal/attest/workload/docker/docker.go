// Package docker is the agent's "docker" workload attestor,
// selector-compatible with SPIRE's plugin of the same name. For a caller
// PID it finds the container the process runs in from its cgroups
// (internal/attest/workload/cgroup), asks the Docker Engine API over the
// daemon's unix socket for the container (GET /containers/{id}/json, the
// API version negotiated with GET /_ping, or docker_version), and produces
// selectors of type "docker":
//
//	label:<key>:<value>            one per container label
//	env:<NAME>=<value>             one per environment variable (Config.Env)
//	image_id:<image>               the image as the container was created
//	                               with it (Config.Image: a name such as
//	                               nginx:1.27, name@sha256:..., or an ID)
//	image_config_digest:<id>       the image's ID (sha256:...)
//
// A process in no container gets no docker selectors and no error; so does
// one in a container the engine does not know (404: another runtime's, as a
// Kubernetes pod's under containerd), where SPIRE fails. A Podman container
// (a libpod- cgroup) is asked of Podman's Docker-compatible API instead, at
// podman_socket_path, or, rootless, at podman_socket_path_template with the
// user's UID from the cgroup path (user-<uid>.slice), as SPIRE 1.15 does.
//
// # The container must be where the process is
//
// A cgroup's name is chosen by whoever creates it, and an unprivileged user
// on a systemd host can create cgroups in its own delegated subtree
// (user@<uid>.service) named after any container's ID. So after the inspect
// the attestor locates the container's own init process (State.Pid, which
// the agent sees when it shares the host's PID namespace, as it must to
// attest containers at all) and requires both to be in the same container
// scope (cgroup.Container.Same): a process that only borrowed a container's
// ID gets an error, not the container's selectors. SPIRE has no such check.
//
// # Deadlines
//
// Each Engine API request has its own timeout (Config.RequestTimeout,
// default 3 s, well inside the agent's 10 s per-call attestation deadline):
// a daemon that accepts the connection but never answers gives a precise
// error ("no answer from the Engine API at /var/run/docker.sock within 3s")
// rather than the attestation set's generic timeout. A refused connection
// or a 5xx answer (a daemon restarting) is retried, three times with 100 ms,
// 200 ms and 400 ms pauses, as SPIRE does, within the call's context.
package docker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sigil-spiffe/sigil/internal/attest/workload/cgroup"
	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/lazyre"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// Type is the selector type (and plugin name).
const Type = "docker"

// Defaults of Config.
const (
	DefaultSocketPath       = "unix:///var/run/docker.sock"
	DefaultPodmanSocketPath = "unix:///run/podman/podman.sock"
	DefaultPodmanTemplate   = "unix:///run/user/%d/podman/podman.sock"
	DefaultRequestTimeout   = 3 * time.Second
)

// Config configures the attestor (plugin_data of WorkloadAttestor
// "docker"; ParseConfig reads it).
type Config struct {
	// SocketPath is docker_socket_path, a unix:// URL.
	SocketPath string
	// Version is docker_version ("1.41"); "" negotiates.
	Version string
	// Matchers, from container_id_cgroup_matchers (with
	// use_new_container_locator = false), replace the default locator.
	Matchers *cgroup.Matchers
	// VerboseLocatorLogs is verbose_container_locator_logs.
	VerboseLocatorLogs bool
	// PodmanSocketPath and PodmanSocketTemplate are podman_socket_path and
	// podman_socket_path_template (one %d, the UID).
	PodmanSocketPath     string
	PodmanSocketTemplate string
	// ProcDir is proc_dir, where the host's proc file system is (a Sigil
	// extension; default /proc).
	ProcDir string
	// RequestTimeout bounds each Engine API request; 0 is
	// DefaultRequestTimeout.
	RequestTimeout time.Duration
	// Log; nil discards.
	Log *slog.Logger
}

// Attestor produces docker selectors. It is safe for concurrent use.
type Attestor struct {
	cfg     Config
	log     *slog.Logger
	locator *cgroup.Locator
	retries []time.Duration

	mu      sync.Mutex
	engines map[string]*engine // by socket path
}

// maxEngines bounds the clients kept (one per rootless Podman user, plus
// Docker's and rootful Podman's).
const maxEngines = 64

// New returns an attestor for cfg (as ParseConfig returns it).
func New(cfg Config) *Attestor {
	if cfg.SocketPath == "" {
		cfg.SocketPath = DefaultSocketPath
	}
	if cfg.PodmanSocketPath == "" {
		cfg.PodmanSocketPath = DefaultPodmanSocketPath
	}
	if cfg.PodmanSocketTemplate == "" {
		cfg.PodmanSocketTemplate = DefaultPodmanTemplate
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Attestor{
		cfg: cfg,
		log: log,
		locator: &cgroup.Locator{ProcDir: cfg.ProcDir, Matchers: cfg.Matchers, Log: log,
			Verbose: cfg.VerboseLocatorLogs},
		retries: []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond},
		engines: map[string]*engine{},
	}
}

// Close drops the idle connections to the engines.
func (a *Attestor) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, e := range a.engines {
		e.close()
	}
	clear(a.engines)
	return nil
}

// Attest returns the docker selectors of process pid: none, without error,
// for a process in no container or in one the engine does not know.
func (a *Attestor) Attest(ctx context.Context, pid int32) ([]selector.Selector, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("docker attestor: invalid pid %d", pid)
	}
	entries, err := cgroup.Read(a.cfg.ProcDir, pid)
	if err != nil {
		return nil, fmt.Errorf("docker attestor: pid %d: %w", pid, err)
	}
	where, err := a.locator.LocateEntries(pid, entries)
	if err != nil {
		return nil, fmt.Errorf("docker attestor: %w", err)
	}
	if where.ID == "" {
		return nil, nil
	}
	if !validContainerID(where.ID) {
		return nil, fmt.Errorf("docker attestor: pid %d: %s is not a container ID or name", pid, clip.Quote(where.ID))
	}
	socket := a.socketFor(entries)
	eng := a.engine(socket)
	var c *containerJSON
	err = a.retry(ctx, func() error {
		var err error
		c, err = eng.inspect(ctx, where.ID)
		return err
	})
	switch {
	case errors.Is(err, errNoSuchContainer):
		a.log.Debug("The container of the workload is unknown to the engine; no docker selectors",
			"pid", pid, "container_id", where.ID, "socket", socket)
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("docker attestor: pid %d: container %s: %w", pid, where.ID, err)
	}
	if err := a.verify(pid, where, c); err != nil {
		return nil, fmt.Errorf("docker attestor: pid %d: %w", pid, err)
	}
	return selectors(c), nil
}

// verify checks that the container's init process is in the container
// scope the workload's cgroups named.
func (a *Attestor) verify(pid int32, where cgroup.Container, c *containerJSON) error {
	if !c.State.Running || c.State.Pid <= 0 || c.State.Pid > 1<<31-1 {
		return fmt.Errorf("container %s is not running (State.Pid %d): its selectors cannot be vouched for", where.ID, c.State.Pid)
	}
	initPid := int32(c.State.Pid)
	if initPid == pid {
		return nil
	}
	init, err := a.locator.Locate(initPid)
	if err != nil {
		return fmt.Errorf("container %s: its init process (State.Pid %d) cannot be located to check the workload is in the container (the agent must share the host's PID namespace): %w",
			where.ID, initPid, err)
	}
	if !init.Same(where) {
		a.log.Warn("A workload's cgroups name a container it is not in; refused",
			"pid", pid, "container_id", where.ID, "workload_cgroups", where.Scopes, "container_cgroups", init.Scopes)
		return fmt.Errorf("its cgroups (%s) name container %s, whose processes are in %s",
			clip.Cut(strings.Join(where.Scopes, ", "), 256), where.ID, clip.Cut(strings.Join(init.Scopes, ", "), 256))
	}
	return nil
}

// selectors are the container's selectors, sorted.
func selectors(c *containerJSON) []selector.Selector {
	var out []selector.Selector
	add := func(v string) { out = append(out, selector.Selector{Type: Type, Value: v}) }
	for k, v := range c.Config.Labels {
		add("label:" + k + ":" + v)
	}
	for _, e := range c.Config.Env {
		add("env:" + e)
	}
	if c.Config.Image != "" {
		add("image_id:" + c.Config.Image)
	}
	if c.Image != "" {
		add("image_config_digest:" + c.Image)
	}
	selector.Sort(out)
	return slices.Compact(out)
}

// rePodman and reUserUID find a Podman container's cgroup and, rootless,
// its user (as SPIRE 1.15).
var (
	rePodman  = lazyre.New(`(?:libpod-|/libpod/)`)
	reUserUID = lazyre.New(`/user-(\d+)\.slice/`)
)

// socketFor is the engine to ask: Podman's for a libpod cgroup (the
// user's, rootless), else Docker's.
func (a *Attestor) socketFor(entries []cgroup.Entry) string {
	for _, e := range entries {
		if !rePodman.MatchString(e.Path) {
			continue
		}
		if m := reUserUID.FindStringSubmatch(e.Path); m != nil {
			if uid, err := strconv.ParseUint(m[1], 10, 32); err == nil {
				return socketFile(fmt.Sprintf(a.cfg.PodmanSocketTemplate, uid))
			}
		}
		return socketFile(a.cfg.PodmanSocketPath)
	}
	return socketFile(a.cfg.SocketPath)
}

// socketFile is the file of a unix:// URL (ParseConfig checked it).
func socketFile(u string) string { return strings.TrimPrefix(u, "unix://") }

func (a *Attestor) engine(socket string) *engine {
	a.mu.Lock()
	defer a.mu.Unlock()
	e := a.engines[socket]
	if e == nil {
		if len(a.engines) >= maxEngines {
			for _, old := range a.engines {
				old.close()
			}
			clear(a.engines)
		}
		e = newEngine(socket, a.cfg.Version, a.cfg.RequestTimeout)
		a.engines[socket] = e
	}
	return e
}

// retry runs f, again after each pause of a.retries while it fails with a
// transient error (a refused connection, a missing socket, a 5xx answer)
// and ctx is not done.
func (a *Attestor) retry(ctx context.Context, f func() error) error {
	for i := 0; ; i++ {
		err := f()
		if err == nil || i == len(a.retries) || !transient(err) {
			return err
		}
		t := time.NewTimer(a.retries[i])
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

func transient(err error) bool {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.status >= 500
	}
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT)
}

// validContainerID accepts what Docker accepts as a container ID or name
// ([a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 128 bytes here): a matcher could
// capture anything, and the ID goes into a request path.
func validContainerID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		alnum := c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !alnum && (i == 0 || c != '_' && c != '.' && c != '-') {
			return false
		}
	}
	return true
}
