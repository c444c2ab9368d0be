package fleet

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// confineCPU puts process pid in a CPU-limited cgroup of its own (cgroup
// v2's cpu.max, else v1's cpu controller), allowing it cpus CPUs: a server
// on a machine busy with other work, reproducibly (-fleet.stormcpu). It
// needs root and a writable cgroup file system; the cgroup is removed by
// the returned function once the process has exited.
func confineCPU(pid int, cpus float64, name string) (func(), error) {
	const period = 100000 // µs
	quota := int(cpus * period)
	if quota < 1000 {
		return nil, fmt.Errorf("confine CPU: %v CPUs is below the 1 ms quota the kernel accepts", cpus)
	}
	var dir string
	var limits map[string]string
	switch {
	case fileExists("/sys/fs/cgroup/cgroup.controllers"): // v2
		dir = filepath.Join("/sys/fs/cgroup", name)
		limits = map[string]string{"cpu.max": fmt.Sprintf("%d %d", quota, period)}
	case fileExists("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"): // v1
		dir = filepath.Join("/sys/fs/cgroup/cpu", name)
		limits = map[string]string{"cpu.cfs_period_us": strconv.Itoa(period), "cpu.cfs_quota_us": strconv.Itoa(quota)}
	default:
		return nil, errors.New("confine CPU: no cgroup cpu controller under /sys/fs/cgroup")
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("confine CPU: %w", err)
	}
	for _, f := range []string{"cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.max"} {
		if v, ok := limits[f]; ok {
			if err := os.WriteFile(filepath.Join(dir, f), []byte(v), 0o644); err != nil {
				return nil, fmt.Errorf("confine CPU: %w", err)
			}
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return nil, fmt.Errorf("confine CPU: %w", err)
	}
	return func() { _ = os.Remove(dir) }, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
