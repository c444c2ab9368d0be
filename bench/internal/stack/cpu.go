package stack

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
)

// CPUTime returns the process's user+system CPU time so far. On a shared
// machine CPU time per operation is far steadier than wall time per
// operation: it does not depend on how much of the machine the benchmark
// got.
func CPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// clockTick is the unit of /proc/<pid>/stat CPU times (USER_HZ, 100 on
// every Linux architecture Go supports; sysconf needs cgo).
const clockTick = 10 * time.Millisecond

// ProcessCPUTime returns user+system CPU time of another process from
// /proc/<pid>/stat, with 10 ms resolution.
func ProcessCPUTime(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read process CPU time: %w", err)
	}
	// Fields after the command name, which is in parentheses and may
	// contain spaces: state is field 3, utime 14, stime 15.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	var utime, stime int64
	if _, err := fmt.Sscan(f[11], &utime); err != nil {
		return 0, fmt.Errorf("malformed /proc/%d/stat utime: %w", pid, err)
	}
	if _, err := fmt.Sscan(f[12], &stime); err != nil {
		return 0, fmt.Errorf("malformed /proc/%d/stat stime: %w", pid, err)
	}
	return time.Duration(utime+stime) * clockTick, nil
}

// RunqueueWait returns the total time this process's threads have spent
// runnable but waiting for a CPU (second field of
// /proc/self/task/*/schedstat; needs schedstats, else 0). Its growth over a
// benchmark, per op, shows how much of a latency was the machine being
// busy with other work rather than Sigil.
func RunqueueWait() time.Duration {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return 0
	}
	var total int64
	for _, t := range tasks {
		data, err := os.ReadFile("/proc/self/task/" + t.Name() + "/schedstat")
		if err != nil {
			continue
		}
		f := strings.Fields(string(data))
		if len(f) < 2 {
			continue
		}
		var wait int64
		if _, err := fmt.Sscan(f[1], &wait); err == nil {
			total += wait
		}
	}
	return time.Duration(total)
}

// Memory is a process's resident set size now and at its peak, in bytes.
type Memory struct {
	RSS, PeakRSS int64
}

// ProcessMemory reads VmRSS and VmHWM (the peak RSS since the process
// started) from /proc/<pid>/status.
func ProcessMemory(pid int) (Memory, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Memory{}, fmt.Errorf("read process memory: %w", err)
	}
	var m Memory
	for line := range strings.Lines(string(data)) {
		key, val, ok := strings.Cut(line, ":")
		if !ok || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		var kb int64
		if _, err := fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(val), " kB"), &kb); err != nil {
			return Memory{}, fmt.Errorf("malformed /proc/%d/status %s: %w", pid, key, err)
		}
		if key == "VmRSS" {
			m.RSS = kb << 10
		} else {
			m.PeakRSS = kb << 10
		}
	}
	return m, nil
}
