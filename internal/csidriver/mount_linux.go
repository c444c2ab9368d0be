package csidriver

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// bindMountReadOnly bind-mounts src at dst, then remounts the bind
// read-only (a bind mount ignores MS_RDONLY on its first call). A failed
// remount undoes the bind.
func bindMountReadOnly(src, dst string) error {
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind mount: %w", err)
	}
	if err := unix.Mount("", dst, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		_ = unix.Unmount(dst, 0)
		return fmt.Errorf("remount read-only: %w", err)
	}
	return nil
}

func unmount(p string) error { return unix.Unmount(p, 0) }

// mountInfo is read to tell mount points; tests may point it elsewhere.
var mountInfo = "/proc/self/mountinfo"

// isMountPoint reports whether p is the mount point of an entry of
// /proc/self/mountinfo (field 5, octal escapes undone).
func isMountPoint(p string) (bool, error) {
	f, err := os.Open(mountInfo)
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.SplitN(sc.Text(), " ", 6)
		if len(fields) >= 5 && unescapeOctal(fields[4]) == p {
			return true, nil
		}
	}
	return false, sc.Err()
}

// unescapeOctal undoes the kernel's \ooo escapes (space, tab, newline,
// backslash) in mountinfo paths.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
