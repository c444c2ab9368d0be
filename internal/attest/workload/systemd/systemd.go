// Package systemd is the agent's "systemd" workload attestor,
// selector-compatible with SPIRE's plugin of the same name. For a caller
// PID it asks systemd, over D-Bus on the system bus, which unit the
// process belongs to (org.freedesktop.systemd1.Manager.GetUnitByPID), then
// two of the unit's properties (org.freedesktop.DBus.Properties.Get of
// org.freedesktop.systemd1.Unit's Id and FragmentPath), and produces
// selectors of type "systemd":
//
//	id:<unit>                 the unit's name, e.g. nginx.service
//	fragment_path:<path>      its unit file, e.g. /lib/systemd/system/nginx.service
//	                          ("fragment_path:" for a unit without one, such
//	                          as session-3.scope or a transient unit, as SPIRE)
//
// A process that belongs to no unit (systemd answers
// org.freedesktop.systemd1.NoUnitForPID) gets no systemd selectors and no
// error (SPIRE fails the attestor there).
//
// The bus is the system bus: DBUS_SYSTEM_BUS_ADDRESS, else
// unix:path=/run/dbus/system_bus_socket, as libdbus and godbus find it. The
// D-Bus client is this package's own (dbus.go: SASL EXTERNAL, Hello, method
// calls, replies): 60 KiB of the release-built agent, where
// github.com/godbus/dbus/v5 costs 280 KiB.
// Connections are pooled (up to four idle); each call has its own timeout
// (Config.RequestTimeout, default 3 s, inside the agent's 10 s attestation
// deadline), so a bus or systemd that does not answer gives a precise
// error.
package systemd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// Type is the selector type (and plugin name).
const Type = "systemd"

// DefaultRequestTimeout bounds one attestation's D-Bus exchange when
// Config.RequestTimeout is 0.
const DefaultRequestTimeout = 3 * time.Second

// systemd's D-Bus names (org.freedesktop.systemd1(5)).
const (
	systemdName      = "org.freedesktop.systemd1"
	managerPath      = "/org/freedesktop/systemd1"
	managerInterface = "org.freedesktop.systemd1.Manager"
	unitInterface    = "org.freedesktop.systemd1.Unit"
	propsInterface   = "org.freedesktop.DBus.Properties"
	errNoUnitForPID  = "org.freedesktop.systemd1.NoUnitForPID"
)

// Config configures the attestor. WorkloadAttestor "systemd" has no
// plugin_data keys (as SPIRE's).
type Config struct {
	// BusAddress is the D-Bus server address of the system bus; ""
	// is $DBUS_SYSTEM_BUS_ADDRESS, else DefaultSystemBus.
	BusAddress string
	// RequestTimeout bounds each attestation's exchange with the bus; 0
	// is DefaultRequestTimeout.
	RequestTimeout time.Duration
}

// ParseConfig reads WorkloadAttestor "systemd"'s plugin_data, which has
// no keys.
func ParseConfig(d *config.PluginData) (Config, error) {
	return Config{}, d.Done()
}

// Attestor produces systemd selectors. It is safe for concurrent use.
type Attestor struct {
	address string
	timeout time.Duration
	bus     bus
}

// New returns an attestor; it fails on a bus address without a unix
// socket.
func New(cfg Config) (*Attestor, error) {
	addr := cfg.BusAddress
	if addr == "" {
		addr = os.Getenv("DBUS_SYSTEM_BUS_ADDRESS")
	}
	if addr == "" {
		addr = DefaultSystemBus
	}
	socket, err := socketOf(addr)
	if err != nil {
		return nil, err
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	return &Attestor{address: addr, timeout: cfg.RequestTimeout, bus: bus{socket: socket}}, nil
}

// Close closes the idle connections to the bus.
func (a *Attestor) Close() error {
	a.bus.close()
	return nil
}

// Attest returns the systemd selectors of process pid: none, without
// error, when it belongs to no unit.
func (a *Attestor) Attest(ctx context.Context, pid int32) ([]selector.Selector, error) {
	if pid <= 0 {
		// GetUnitByPID(0) would name the agent's own unit.
		return nil, fmt.Errorf("systemd attestor: invalid pid %d", pid)
	}
	u, err := a.unit(ctx, uint32(pid))
	if err != nil {
		return nil, fmt.Errorf("systemd attestor: pid %d: %w", pid, err)
	}
	if u.id == "" {
		return nil, nil
	}
	return []selector.Selector{
		{Type: Type, Value: "id:" + u.id},
		{Type: Type, Value: "fragment_path:" + u.fragmentPath},
	}, nil
}

type unitInfo struct {
	id, fragmentPath string
}

// unit asks systemd for pid's unit, on a pooled connection (a fresh one
// if a pooled one turns out to be dead).
func (a *Attestor) unit(ctx context.Context, pid uint32) (unitInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	for attempt := 0; ; attempt++ {
		c, err := a.bus.get(ctx)
		if err != nil {
			return unitInfo{}, a.explain(ctx, "connect to the system bus", err)
		}
		stop := c.watch(ctx)
		u, err := lookup(c, pid)
		done := !stop()
		var be *BusError
		if err == nil || errors.As(err, &be) {
			a.bus.put(c) // an error reply leaves the connection usable
			return u, err
		}
		_ = c.c.Close()
		if c.reused && !done && attempt == 0 && brokenConn(err) {
			continue // the bus closed an idle connection: once more, on a new one
		}
		return unitInfo{}, a.explain(ctx, "ask systemd for the unit", err)
	}
}

// explain turns a timeout into an error that says what did not answer.
func (a *Attestor) explain(ctx context.Context, what string, err error) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return fmt.Errorf("%s (D-Bus at %s): %w", what, clip.Quote(a.address), ctx.Err())
	}
	// The connection's deadline is ctx's: its timeout can come a moment
	// before ctx reports it.
	if errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%s: no answer from the D-Bus system bus at %s within %s (or the caller's deadline)", what, clip.Quote(a.address), a.timeout)
	}
	return fmt.Errorf("%s (D-Bus at %s): %w", what, clip.Quote(a.address), err)
}

func brokenConn(err error) bool {
	return errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, os.ErrClosed) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// lookup runs GetUnitByPID, then gets Id and FragmentPath (both calls
// sent at once).
func lookup(c *conn, pid uint32) (unitInfo, error) {
	r, err := c.call(methodCall{dest: systemdName, path: managerPath, iface: managerInterface, member: "GetUnitByPID", args: []any{pid}})
	var be *BusError
	if errors.As(err, &be) && be.Name == errNoUnitForPID {
		return unitInfo{}, nil
	}
	if err != nil {
		return unitInfo{}, fmt.Errorf("GetUnitByPID: %w", err)
	}
	if r.sig != "o" {
		return unitInfo{}, fmt.Errorf("GetUnitByPID answered a %s, not an object path", clip.Quote(r.sig))
	}
	d := decoder{b: r.body, order: r.order}
	path, err := d.str()
	if err != nil {
		return unitInfo{}, fmt.Errorf("GetUnitByPID: %w", err)
	}
	get := func(prop string) methodCall {
		return methodCall{dest: systemdName, path: path, iface: propsInterface, member: "Get", args: []any{unitInterface, prop}}
	}
	s1, err := c.send(get("Id"))
	if err != nil {
		return unitInfo{}, err
	}
	s2, err := c.send(get("FragmentPath"))
	if err != nil {
		return unitInfo{}, err
	}
	replies, err := c.awaitAll(s1, s2)
	if err != nil {
		return unitInfo{}, fmt.Errorf("unit %s: Properties.Get: %w", clip.Quote(path), err)
	}
	var u unitInfo
	for i, dst := range []*string{&u.id, &u.fragmentPath} {
		name := [...]string{"Id", "FragmentPath"}[i]
		v, err := stringVariant(replies[i])
		if err != nil {
			return unitInfo{}, fmt.Errorf("unit %s: property %s: %w", clip.Quote(path), name, err)
		}
		*dst = v
	}
	if u.id == "" || strings.ContainsAny(u.id, "/\n") {
		return unitInfo{}, fmt.Errorf("unit %s: Id %s is not a unit name", clip.Quote(path), clip.Quote(u.id))
	}
	return u, nil
}

// stringVariant reads a Properties.Get reply: a variant holding a string.
func stringVariant(r reply) (string, error) {
	if r.sig != "v" {
		return "", fmt.Errorf("answer of type %s, not a variant", clip.Quote(r.sig))
	}
	d := decoder{b: r.body, order: r.order}
	inner, err := d.sig()
	if err != nil {
		return "", err
	}
	if inner != "s" {
		return "", fmt.Errorf("of type %s, not a string", clip.Quote(inner))
	}
	return d.str()
}
