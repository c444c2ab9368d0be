package peercred

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func TestParseStartTime(t *testing.T) {
	rest := " S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 20 21\n"
	for _, comm := range []string{"(sleep)", "(a b) (c))", "()", "(x) S 1)"} {
		got, err := parseStartTime([]byte("42 " + comm + rest))
		if err != nil || got != 987654 {
			t.Errorf("comm %q: got %d, %v", comm, got, err)
		}
	}
	// A prefix that ends right after the start time's separator is enough.
	if got, err := parseStartTime([]byte("42 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 55 ")); err != nil || got != 55 {
		t.Errorf("prefix: got %d, %v", got, err)
	}
	for _, bad := range []string{
		"", "42 sleep S 1", "42 (sleep) S 1 2",
		"42 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 -5 20",
		"42 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 99999999999999999999999 20",
		// cut off inside the start time: 98765 of 987654 must not pass.
		"42 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 98765",
	} {
		if v, err := parseStartTime([]byte(bad)); err == nil {
			t.Errorf("%q parsed as %d", bad, v)
		}
	}
}

func TestReadProcFile(t *testing.T) {
	self := int32(os.Getpid())
	want, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Skip(err)
	}
	buf := make([]byte, 4096)
	n, err := ReadProcFile("", self, "stat", buf)
	if err != nil {
		t.Fatal(err)
	}
	// Fields up to the state letter do not change between two reads.
	prefix := string(want[:strings.LastIndexByte(string(want), ')')+3])
	if got := string(buf[:n]); !strings.HasPrefix(got, prefix) {
		t.Fatalf("read %q, want prefix %q", got, prefix)
	}
	n, err = ReadProcFile("", self, "stat", buf[:10])
	if !errors.Is(err, ErrShortBuffer) || n != 10 {
		t.Fatalf("short buffer: n=%d err=%v", n, err)
	}
	if _, err := ReadProcFile("", self, "no-such-file", buf); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v, want ErrNotExist", err)
	}
	if _, err := ReadProcFile(t.TempDir(), self, "stat", buf); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("other proc dir: %v, want ErrNotExist", err)
	}
	if _, err := ReadProcFile("/"+strings.Repeat("x", maxProcPath), self, "stat", buf); err == nil {
		t.Fatal("over-long path accepted")
	}
}

func TestStartTimeDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's instrumentation moves the stack buffer to the heap")
	}
	self := int32(os.Getpid())
	if _, err := StartTime(self); err != nil {
		t.Skip(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := StartTime(self); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("StartTime allocates %.1f times per call", allocs)
	}
	c := Cred{PID: self}
	c.StartTime, _ = StartTime(self)
	if allocs := testing.AllocsPerRun(100, func() { _ = c.StillAlive() }); allocs != 0 {
		t.Fatalf("StillAlive allocates %.1f times per call", allocs)
	}
}

func BenchmarkStillAlive(b *testing.B) {
	self := int32(os.Getpid())
	start, err := StartTime(self)
	if err != nil {
		b.Skip(err)
	}
	c := Cred{PID: self, StartTime: start}
	b.ReportAllocs()
	for b.Loop() {
		if err := c.StillAlive(); err != nil {
			b.Fatal(err)
		}
	}
}
