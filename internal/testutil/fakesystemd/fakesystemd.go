// Package fakesystemd runs, for tests, a private D-Bus message bus (the
// real dbus-daemon of the Debian package "dbus", with a configuration of
// its own in a temporary directory) and on it a small fake
// org.freedesktop.systemd1: the Manager object's GetUnitByPID and, for
// each unit object, org.freedesktop.DBus.Properties.Get of the
// org.freedesktop.systemd1.Unit properties Id and FragmentPath, with
// systemd's object paths (/org/freedesktop/systemd1/unit/nginx_2eservice)
// and error names (org.freedesktop.systemd1.NoUnitForPID). The fake speaks
// D-Bus through github.com/godbus/dbus/v5, an implementation independent
// of the attestor's own client.
//
// Import it only from tests.
package fakesystemd

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

// Require skips t when dbus-daemon is missing, or fails it when the CI
// environment variable is set (and not "false").
func Require(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("dbus-daemon"); err != nil {
		if ci := os.Getenv("CI"); ci != "" && ci != "false" {
			t.Fatalf("dbus-daemon not found (CI is set: the systemd attestor's tests must run; install the dbus package)")
		}
		t.Skip("dbus-daemon not found (install the dbus package)")
	}
}

// Bus is a running private dbus-daemon.
type Bus struct {
	// Address is its D-Bus server address ("unix:path=...").
	Address string
	// Socket is its unix socket's path.
	Socket string

	cmd  *exec.Cmd
	done chan struct{}
}

// busConfig is a system-bus-like configuration: EXTERNAL authentication
// only, anyone may own a name and call anything (the test runs as one
// user), replies only when requested, as on the system bus.
const busConfig = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=%s</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
`

// Start runs a bus on a socket in a short temporary directory until the
// test ends.
func Start(t testing.TB) *Bus {
	t.Helper()
	dir, err := os.MkdirTemp("", "dbus")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return StartAt(t, filepath.Join(dir, "system_bus_socket"))
}

// StartAt runs a bus on the socket path given (its directory must exist)
// until the test ends or Stop.
func StartAt(t testing.TB, socket string) *Bus {
	t.Helper()
	Require(t)
	conf := socket + ".conf"
	if err := os.WriteFile(conf, fmt.Appendf(nil, busConfig, socket), 0o600); err != nil {
		t.Fatal(err)
	}
	b := &Bus{Socket: socket, done: make(chan struct{})}
	// --print-address: the daemon writes its address once it listens.
	b.cmd = exec.Command("dbus-daemon", "--config-file="+conf, "--nofork", "--nopidfile", "--nosyslog", "--print-address=1")
	out, err := b.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	b.cmd.Stderr = &stderr
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = b.cmd.Wait()
		close(b.done)
	}()
	t.Cleanup(b.Stop)
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		b.Stop()
		t.Fatalf("dbus-daemon did not start: %v: %s", err, stderr.String())
	}
	b.Address = strings.TrimSpace(line)
	if !strings.HasPrefix(b.Address, "unix:path="+socket) {
		t.Fatalf("dbus-daemon listens on %q, not %s", b.Address, socket)
	}
	b.Address = "unix:path=" + socket
	return b
}

// Stop ends the daemon (every connection to it is closed) and waits for it.
func (b *Bus) Stop() {
	_ = b.cmd.Process.Kill()
	<-b.done
	_ = os.Remove(b.Socket)
}

// Unit is what the fake systemd knows of one unit.
type Unit struct {
	ID           string
	FragmentPath string
}

// Systemd is a fake org.freedesktop.systemd1 on a bus.
type Systemd struct {
	conn *dbus.Conn

	mu    sync.Mutex
	units map[uint32]Unit
	// idValue replaces the Id property's value (e.g. with a non-string).
	idValue any
	hang    chan struct{}
	calls   []string
}

// Serve connects to b, takes the name org.freedesktop.systemd1 and
// answers until the test ends.
func (b *Bus) Serve(t testing.TB) *Systemd {
	t.Helper()
	conn, err := dbus.Connect(b.Address)
	if err != nil {
		t.Fatal(err)
	}
	s := &Systemd{conn: conn, units: map[uint32]Unit{}}
	t.Cleanup(func() {
		s.Release()
		_ = conn.Close()
	})
	if err := conn.Export(manager{s}, "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager"); err != nil {
		t.Fatal(err)
	}
	if err := conn.ExportSubtree(properties{s}, "/org/freedesktop/systemd1/unit", "org.freedesktop.DBus.Properties"); err != nil {
		t.Fatal(err)
	}
	r, err := conn.RequestName("org.freedesktop.systemd1", dbus.NameFlagDoNotQueue)
	if err != nil || r != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("RequestName org.freedesktop.systemd1: %v (reply %d)", err, r)
	}
	return s
}

// Set places process pid in unit u.
func (s *Systemd) Set(pid int, u Unit) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.units[uint32(pid)] = u
}

// SetIDValue makes every unit's Id property v instead of its ID (a value
// of another D-Bus type than a string, say).
func (s *Systemd) SetIDValue(v any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.idValue = v
}

// Hang makes every method call block (no answer) until Release.
func (s *Systemd) Hang() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hang == nil {
		s.hang = make(chan struct{})
	}
}

// Release ends Hang.
func (s *Systemd) Release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hang != nil {
		close(s.hang)
		s.hang = nil
	}
}

// Calls returns the method calls answered so far, as
// "GetUnitByPID 1234" and "Get /org/.../web_2eservice Id".
func (s *Systemd) Calls() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.calls...)
}

// begin records a call and waits while the fake hangs.
func (s *Systemd) begin(call string) {
	s.mu.Lock()
	s.calls = append(s.calls, call)
	hang := s.hang
	s.mu.Unlock()
	if hang != nil {
		select {
		case <-hang:
		case <-time.After(time.Minute):
		}
	}
}

// UnitPath is systemd's object path for a unit name: every byte other
// than an ASCII letter or digit (and a leading digit) as _xx.
func UnitPath(name string) dbus.ObjectPath {
	var b strings.Builder
	b.WriteString("/org/freedesktop/systemd1/unit/")
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "_%02x", c)
		}
	}
	return dbus.ObjectPath(b.String())
}

type manager struct{ s *Systemd }

// GetUnitByPID is org.freedesktop.systemd1.Manager.GetUnitByPID.
func (m manager) GetUnitByPID(pid uint32) (dbus.ObjectPath, *dbus.Error) {
	m.s.begin(fmt.Sprintf("GetUnitByPID %d", pid))
	m.s.mu.Lock()
	u, ok := m.s.units[pid]
	m.s.mu.Unlock()
	if !ok {
		return "", dbus.NewError("org.freedesktop.systemd1.NoUnitForPID", []any{fmt.Sprintf("PID %d does not belong to any loaded unit.", pid)})
	}
	return UnitPath(u.ID), nil
}

type properties struct{ s *Systemd }

// Get is org.freedesktop.DBus.Properties.Get on a unit object.
func (p properties) Get(msg dbus.Message, iface, prop string) (dbus.Variant, *dbus.Error) {
	path, _ := msg.Headers[dbus.FieldPath].Value().(dbus.ObjectPath)
	p.s.begin(fmt.Sprintf("Get %s %s", path, prop))
	p.s.mu.Lock()
	defer p.s.mu.Unlock()
	var unit *Unit
	for _, u := range p.s.units {
		if UnitPath(u.ID) == path {
			unit = &u
			break
		}
	}
	if unit == nil {
		return dbus.Variant{}, dbus.NewError("org.freedesktop.DBus.Error.UnknownObject", []any{fmt.Sprintf("Unknown object '%s'.", path)})
	}
	if iface != "org.freedesktop.systemd1.Unit" {
		return dbus.Variant{}, dbus.NewError("org.freedesktop.DBus.Error.UnknownInterface", []any{fmt.Sprintf("Unknown interface %s.", iface)})
	}
	switch prop {
	case "Id":
		if p.s.idValue != nil {
			return dbus.MakeVariant(p.s.idValue), nil
		}
		return dbus.MakeVariant(unit.ID), nil
	case "FragmentPath":
		return dbus.MakeVariant(unit.FragmentPath), nil
	}
	return dbus.Variant{}, dbus.NewError("org.freedesktop.DBus.Error.UnknownProperty", []any{fmt.Sprintf("Unknown property %s.", prop)})
}
