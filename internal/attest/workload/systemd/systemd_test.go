package systemd_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/attest/workload/systemd"
	"github.com/sigil-spiffe/sigil/internal/config"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/testutil/fakesystemd"
)

// child starts a process that lives until the test ends and returns its
// PID.
func child(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd.Process.Pid
}

func newAttestor(t *testing.T, cfg systemd.Config) *systemd.Attestor {
	t.Helper()
	a, err := systemd.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	return a
}

func values(sels []selector.Selector) []string {
	var out []string
	for _, s := range sels {
		out = append(out, s.Type+":"+s.Value)
	}
	return out
}

// TestAttest: a process placed in a unit gets systemd:id and
// systemd:fragment_path from systemd over the bus (GetUnitByPID with its
// PID, then Id and FragmentPath of the unit object it names); a unit
// without a unit file gets "fragment_path:", as SPIRE.
func TestAttest(t *testing.T) {
	bus := fakesystemd.Start(t)
	sd := bus.Serve(t)
	web, scope := child(t), child(t)
	sd.Set(web, fakesystemd.Unit{ID: "web.service", FragmentPath: "/etc/systemd/system/web.service"})
	sd.Set(scope, fakesystemd.Unit{ID: "session-3.scope"})
	a := newAttestor(t, systemd.Config{BusAddress: bus.Address})

	ctx := context.Background()
	got, err := a.Attest(ctx, int32(web))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"systemd:id:web.service", "systemd:fragment_path:/etc/systemd/system/web.service"}
	if !slices.Equal(values(got), want) {
		t.Fatalf("selectors %q, want %q", values(got), want)
	}
	calls := sd.Calls()
	wantCalls := []string{"GetUnitByPID " + strconv.Itoa(web), "Get /org/freedesktop/systemd1/unit/web_2eservice Id", "Get /org/freedesktop/systemd1/unit/web_2eservice FragmentPath"}
	slices.Sort(calls[1:])
	slices.Sort(wantCalls[1:])
	if !slices.Equal(calls, wantCalls) {
		t.Fatalf("calls %q, want %q", calls, wantCalls)
	}

	got, err = a.Attest(ctx, int32(scope))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"systemd:id:session-3.scope", "systemd:fragment_path:"}; !slices.Equal(values(got), want) {
		t.Fatalf("selectors %q, want %q", values(got), want)
	}
	// Each is accepted by the kind an entry's selectors are checked with.
	r, err := selector.NewRegistry(systemd.SelectorKinds()...)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range append(got, selector.Selector{Type: "systemd", Value: "fragment_path:/etc/systemd/system/web.service"}) {
		if err := r.Check(s); err != nil {
			t.Errorf("produced %s, which SelectorKinds refuses: %v", s, err)
		}
	}
}

// TestNoUnit: a process systemd places in no unit (NoUnitForPID) gets no
// systemd selectors and no error; the connection stays usable.
func TestNoUnit(t *testing.T) {
	bus := fakesystemd.Start(t)
	sd := bus.Serve(t)
	a := newAttestor(t, systemd.Config{BusAddress: bus.Address})
	pid := child(t)
	for range 2 {
		got, err := a.Attest(context.Background(), int32(pid))
		if err != nil || got != nil {
			t.Fatalf("Attest = %q, %v; want nothing, no error", values(got), err)
		}
	}
	sd.Set(pid, fakesystemd.Unit{ID: "late.service", FragmentPath: "/x/late.service"})
	got, err := a.Attest(context.Background(), int32(pid))
	if err != nil || len(got) != 2 {
		t.Fatalf("Attest = %q, %v", values(got), err)
	}
}

// TestRefused: what goes wrong is refused with an error that says what.
func TestRefused(t *testing.T) {
	bus := fakesystemd.Start(t)
	pid := child(t)
	ctx := context.Background()

	t.Run("no systemd on the bus", func(t *testing.T) {
		a := newAttestor(t, systemd.Config{BusAddress: bus.Address})
		_, err := a.Attest(ctx, int32(pid))
		var be *systemd.BusError
		if !errors.As(err, &be) || be.Name != "org.freedesktop.DBus.Error.ServiceUnknown" || !strings.Contains(err.Error(), "GetUnitByPID") {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("no bus", func(t *testing.T) {
		a := newAttestor(t, systemd.Config{BusAddress: "unix:path=" + filepath.Join(t.TempDir(), "none")})
		_, err := a.Attest(ctx, int32(pid))
		if err == nil || !strings.Contains(err.Error(), "connect to the system bus") || !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("not a bus address", func(t *testing.T) {
		if _, err := systemd.New(systemd.Config{BusAddress: "tcp:host=localhost,port=1"}); err == nil || !strings.Contains(err.Error(), "no unix:path=") {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("invalid pid", func(t *testing.T) {
		a := newAttestor(t, systemd.Config{BusAddress: bus.Address})
		if _, err := a.Attest(ctx, 0); err == nil || !strings.Contains(err.Error(), "invalid pid 0") {
			t.Fatalf("err %v", err)
		}
	})

	sd := bus.Serve(t)
	t.Run("Id not a string", func(t *testing.T) {
		sd.Set(pid, fakesystemd.Unit{ID: "web.service"})
		sd.SetIDValue(uint32(7))
		defer sd.SetIDValue(nil)
		a := newAttestor(t, systemd.Config{BusAddress: bus.Address})
		if _, err := a.Attest(ctx, int32(pid)); err == nil || !strings.Contains(err.Error(), `property Id: of type "u", not a string`) {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("Id not a unit name", func(t *testing.T) {
		sd.Set(pid, fakesystemd.Unit{ID: "web.service"})
		sd.SetIDValue("../etc")
		defer sd.SetIDValue(nil)
		a := newAttestor(t, systemd.Config{BusAddress: bus.Address})
		if _, err := a.Attest(ctx, int32(pid)); err == nil || !strings.Contains(err.Error(), `Id "../etc" is not a unit name`) {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("systemd hangs", func(t *testing.T) {
		sd.Set(pid, fakesystemd.Unit{ID: "web.service"})
		sd.Hang()
		defer sd.Release()
		a := newAttestor(t, systemd.Config{BusAddress: bus.Address, RequestTimeout: 300 * time.Millisecond})
		_, err := a.Attest(ctx, int32(pid))
		if err == nil || !strings.Contains(err.Error(), "no answer from the D-Bus system bus at") || !strings.Contains(err.Error(), "within 300ms") {
			t.Fatalf("err %v", err)
		}
		// The caller's own deadline is the same failure.
		a = newAttestor(t, systemd.Config{BusAddress: bus.Address})
		cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		if _, err := a.Attest(cctx, int32(pid)); err == nil || !strings.Contains(err.Error(), "no answer") {
			t.Fatalf("err %v", err)
		}
		// A caller that goes away ends the call.
		cctx, cancel = context.WithCancel(ctx)
		n := len(sd.Calls())
		go func() {
			for len(sd.Calls()) <= n { // until the call is waiting in systemd
				time.Sleep(time.Millisecond)
			}
			cancel()
		}()
		if _, err := a.Attest(cctx, int32(pid)); !errors.Is(err, context.Canceled) {
			t.Fatalf("err %v", err)
		}
	})
}

// TestBusRestart: connections are kept for the next call; when the bus
// closed them (dbus-daemon restarted), the next call works on a new one.
func TestBusRestart(t *testing.T) {
	bus := fakesystemd.Start(t)
	sd := bus.Serve(t)
	pid := child(t)
	sd.Set(pid, fakesystemd.Unit{ID: "web.service", FragmentPath: "/web.service"})
	a := newAttestor(t, systemd.Config{BusAddress: bus.Address})
	if _, err := a.Attest(context.Background(), int32(pid)); err != nil {
		t.Fatal(err)
	}

	bus.Stop()
	bus = fakesystemd.StartAt(t, bus.Socket)
	sd = bus.Serve(t)
	sd.Set(pid, fakesystemd.Unit{ID: "web2.service", FragmentPath: "/web2.service"})
	got, err := a.Attest(context.Background(), int32(pid))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"systemd:id:web2.service", "systemd:fragment_path:/web2.service"}; !slices.Equal(values(got), want) {
		t.Fatalf("selectors %q, want %q", values(got), want)
	}
}

// TestConcurrent: many attestations at once, each answered with its own
// process's unit.
func TestConcurrent(t *testing.T) {
	bus := fakesystemd.Start(t)
	sd := bus.Serve(t)
	a := newAttestor(t, systemd.Config{BusAddress: bus.Address})
	pids := []int{child(t), child(t), child(t)}
	for i, pid := range pids {
		sd.Set(pid, fakesystemd.Unit{ID: "u" + strconv.Itoa(i) + ".service", FragmentPath: "/u" + strconv.Itoa(i)})
	}
	var wg sync.WaitGroup
	errs := make(chan error, 30)
	for i := range 30 {
		wg.Go(func() {
			k := i % len(pids)
			got, err := a.Attest(context.Background(), int32(pids[k]))
			if err == nil && (len(got) != 2 || got[0].Value != "id:u"+strconv.Itoa(k)+".service") {
				err = errors.New("wrong selectors " + strings.Join(values(got), ","))
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestDefaultBus: without BusAddress, DBUS_SYSTEM_BUS_ADDRESS names the
// bus.
func TestDefaultBus(t *testing.T) {
	bus := fakesystemd.Start(t)
	sd := bus.Serve(t)
	pid := child(t)
	sd.Set(pid, fakesystemd.Unit{ID: "web.service", FragmentPath: "/web.service"})
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.Address)
	a := newAttestor(t, systemd.Config{})
	if got, err := a.Attest(context.Background(), int32(pid)); err != nil || len(got) != 2 {
		t.Fatalf("Attest = %q, %v", values(got), err)
	}
}

// TestParseConfig: WorkloadAttestor "systemd" takes no keys.
func TestParseConfig(t *testing.T) {
	if _, err := systemd.ParseConfig(config.NewPlugin("WorkloadAttestor", "systemd", map[string]any{}).Data()); err != nil {
		t.Fatal(err)
	}
	_, err := systemd.ParseConfig(config.NewPlugin("WorkloadAttestor", "systemd", map[string]any{"bus_address": "unix:path=/x"}).Data())
	if err == nil || !strings.Contains(err.Error(), "bus_address") {
		t.Fatalf("err %v", err)
	}
}

// BenchmarkAttest is one attestation through the bus: GetUnitByPID, then
// the two Properties.Get at once, on a pooled connection (the fake
// systemd answers in this process; dbus-daemon is its own).
func BenchmarkAttest(b *testing.B) {
	bus := fakesystemd.Start(b)
	sd := bus.Serve(b)
	sd.Set(os.Getpid(), fakesystemd.Unit{ID: "bench.service", FragmentPath: "/etc/systemd/system/bench.service"})
	a, err := systemd.New(systemd.Config{BusAddress: bus.Address})
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	ctx := context.Background()
	for b.Loop() {
		if sels, err := a.Attest(ctx, int32(os.Getpid())); err != nil || len(sels) != 2 {
			b.Fatal(sels, err)
		}
	}
}
