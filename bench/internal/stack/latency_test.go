package stack

import (
	"os"
	"runtime"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var l Latencies
	if got := l.Percentile(99); got != 0 {
		t.Fatalf("empty: got %v, want 0", got)
	}
	// 1..100 ms in reverse order: nearest-rank percentiles are exact.
	for i := 100; i >= 1; i-- {
		l.Add(time.Duration(i) * time.Millisecond)
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Millisecond}, {99, 99 * time.Millisecond}, {100, 100 * time.Millisecond}, {1, time.Millisecond}, {0.001, time.Millisecond}} {
		if got := l.Percentile(c.p); got != c.want {
			t.Errorf("p%v: got %v, want %v", c.p, got, c.want)
		}
	}
	if l.Len() != 100 {
		t.Errorf("Len: got %d, want 100", l.Len())
	}
}

func TestProcessCPUTime(t *testing.T) {
	// Burn a few ticks of CPU (measured, not a wall-clock span: on a busy
	// machine 50 ms of wall time can be less than one tick of CPU), then
	// our own /proc entry must show more than zero and no more than the
	// rusage figure plus one tick.
	start, deadline := CPUTime(), time.Now().Add(time.Minute)
	for CPUTime()-start < 3*clockTick && time.Now().Before(deadline) {
	}
	got, err := ProcessCPUTime(pidSelf())
	if err != nil {
		t.Fatal(err)
	}
	self := CPUTime()
	if got <= 0 || got > self+clockTick {
		t.Fatalf("ProcessCPUTime(self) = %v, rusage says %v", got, self)
	}
	if _, err := ProcessCPUTime(-1); err == nil {
		t.Fatal("ProcessCPUTime(-1): want an error")
	}
}

func pidSelf() int { return os.Getpid() }

func TestProcessMemory(t *testing.T) {
	// Touch 32 MiB so the peak is well above zero; the peak is at least
	// the current RSS.
	buf := make([]byte, 32<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	m, err := ProcessMemory(pidSelf())
	if err != nil {
		t.Fatal(err)
	}
	if m.RSS < 32<<20 || m.PeakRSS < m.RSS {
		t.Fatalf("ProcessMemory(self) = %+v, want RSS >= 32 MiB <= PeakRSS", m)
	}
	runtime.KeepAlive(buf)
	if _, err := ProcessMemory(-1); err == nil {
		t.Fatal("ProcessMemory(-1): want an error")
	}
}
