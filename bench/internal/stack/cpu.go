package stack

import (
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
