package cgroup

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/lazyre"
)

// Container is where Locate found a process.
type Container struct {
	// ID is the container ID; "" when the process is in no container.
	ID string
	// PodUID is the Kubernetes pod's UID, with dashes (the systemd
	// driver's underscores are turned back); only with Locator.PodUID,
	// and "" when no pod is named.
	PodUID string
	// Scopes are the cgroup paths (or mount roots) the ID was read from,
	// each cut after the segment holding the ID, sorted and distinct:
	// "/system.slice/docker-<id>.scope" for a process in a sub-cgroup of
	// that scope too.
	Scopes []string
	// FromMountInfo: found in /proc/<pid>/mountinfo (the process shares
	// the agent's cgroup), not in its cgroup file.
	FromMountInfo bool
}

// Same reports whether c and o are the same container in the same
// cgroups: same ID, same pod, same scopes. A process that only names a
// container's ID in a cgroup it created itself is not Same as the
// container's own processes.
func (c Container) Same(o Container) bool {
	return c.ID == o.ID && c.PodUID == o.PodUID && slices.Equal(c.Scopes, o.Scopes)
}

// Locator finds a process's container. The zero value reads /proc with
// the default (SPIRE's new) locator. It is safe for concurrent use.
type Locator struct {
	// ProcDir is the proc file system's root; "" is /proc. Tests point it
	// at a directory of <pid>/cgroup and <pid>/mountinfo files.
	ProcDir string
	// PodUID also extracts the Kubernetes pod UID, and lets a line that
	// names a pod win over lines that do not (the k8s attestor).
	PodUID bool
	// Matchers, when set, are the only way the ID is found (SPIRE's
	// container_id_cgroup_matchers with use_new_container_locator =
	// false): no heuristic, no pod UID, no mountinfo.
	Matchers *Matchers
	// Log receives Verbose's lines and conflicts at debug level; nil
	// discards.
	Log *slog.Logger
	// Verbose logs every cgroup line and mount considered (SPIRE's
	// verbose_container_locator_logs).
	Verbose bool
}

var (
	// reContainerID: a container ID is a 64-hex-digit word.
	reContainerID = lazyre.New(`\b[[:xdigit:]]{64}\b`)
	// rePodUID: "pod" and a UUID, its dashes as underscores under the
	// systemd driver (kubepods-besteffort-pod<uid>.slice).
	rePodUID = lazyre.New(`\bpod([[:xdigit:]]{8}[-_][[:xdigit:]]{4}[-_][[:xdigit:]]{4}[-_][[:xdigit:]]{4}[-_][[:xdigit:]]{12})\b`)
)

// ErrConflict is wrapped by Locate's error when the process's cgroups name
// more than one container or pod.
var ErrConflict = errors.New("conflicting container identity")

// Locate finds the container of process pid. A process in no container
// gives a zero Container and no error; a process that does not exist an
// error satisfying errors.Is(err, os.ErrNotExist).
func (l *Locator) Locate(pid int32) (Container, error) {
	entries, err := Read(l.ProcDir, pid)
	if err != nil {
		return Container{}, err
	}
	return l.LocateEntries(pid, entries)
}

// LocateEntries is Locate with the process's cgroup file already read
// (pid is used only for mountinfo and logs).
func (l *Locator) LocateEntries(pid int32, entries []Entry) (Container, error) {
	log := l.log()
	if l.Verbose {
		for i, e := range entries {
			log.Debug("PID cgroup enumerated", "pid", pid, "index", i+1, "total", len(entries), "path", e.Path)
		}
	}
	if l.Matchers != nil {
		return l.Matchers.locate(entries)
	}
	var a agreement
	allRoot := true
	for _, e := range entries {
		if e.Path != "/" {
			allRoot = false
		}
		if err := a.add(e.Path, l.PodUID, log); err != nil {
			return Container{}, fmt.Errorf("pid %d: %w", pid, err)
		}
	}
	if a.c.ID != "" || !allRoot {
		return a.result(), nil
	}
	// The process shares the agent's cgroup: its mounts of the cgroup
	// file systems may say more.
	roots, err := l.cgroupMountRoots(pid)
	if err != nil {
		return Container{}, err
	}
	for _, r := range roots {
		if err := a.add(r, l.PodUID, log); err != nil {
			return Container{}, fmt.Errorf("pid %d: mountinfo: %w", pid, err)
		}
	}
	c := a.result()
	c.FromMountInfo = c.ID != ""
	return c, nil
}

func (l *Locator) log() *slog.Logger {
	if l.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l.Log
}

// agreement collects what each path says and checks they agree.
type agreement struct {
	c Container
}

func (a *agreement) add(p string, wantPod bool, log *slog.Logger) error {
	podUID, id, scope := extract(p, wantPod)
	if id == "" {
		return nil
	}
	switch {
	case a.c.PodUID != "" && podUID == "":
		// A line naming a pod wins over one that does not (a kind node:
		// v1 lines name the pod's container, the unified line only the
		// node's docker container).
		return nil
	case a.c.PodUID == "" && podUID != "":
		a.c = Container{}
	}
	if a.c.ID != "" && a.c.ID != id {
		log.Debug("Workload container ID conflict", "previous", a.c.ID, "current", id)
		return fmt.Errorf("%w: cgroups name containers %s and %s", ErrConflict, a.c.ID, id)
	}
	if a.c.PodUID != "" && a.c.PodUID != podUID {
		log.Debug("Workload pod UID conflict", "previous", a.c.PodUID, "current", podUID)
		return fmt.Errorf("%w: cgroups name pods %s and %s", ErrConflict, a.c.PodUID, podUID)
	}
	a.c.ID, a.c.PodUID = id, podUID
	if !slices.Contains(a.c.Scopes, scope) {
		a.c.Scopes = append(a.c.Scopes, scope)
	}
	return nil
}

func (a *agreement) result() Container {
	slices.Sort(a.c.Scopes)
	return a.c
}

// Extract returns what one cgroup path (or cgroup mount root) says: the
// container ID in the last segment holding a 64-hex-digit word (the
// leftmost such word in that segment), and, with wantPod, the pod UID in
// the nearest "pod<uid>" before it. No container ID: all empty.
func Extract(p string, wantPod bool) (podUID, containerID string) {
	podUID, containerID, _ = extract(p, wantPod)
	return podUID, containerID
}

// extract is Extract, also returning the scope: p cut after the segment
// holding the ID.
func extract(p string, wantPod bool) (podUID, containerID, scope string) {
	end := len(p)
	var segStart int
	var seg string
	for end > 0 {
		segStart = strings.LastIndexByte(p[:end], '/') + 1
		seg = p[segStart:end]
		if loc := reContainerID.FindStringIndex(seg); loc != nil {
			containerID = seg[loc[0]:loc[1]]
			scope = p[:end]
			seg = seg[:loc[0]] // what precedes the ID in its segment
			break
		}
		end = segStart - 1
	}
	if containerID == "" || !wantPod {
		return "", containerID, scope
	}
	// The pod UID: in what precedes the ID in its segment, then in the
	// segments before.
	rest := p[:max(segStart-1, 0)]
	for {
		if m := rePodUID.FindStringSubmatch(seg); m != nil {
			return strings.ReplaceAll(m[1], "_", "-"), containerID, scope
		}
		if rest == "" {
			return "", containerID, scope
		}
		var s string
		rest, s = path.Split(rest)
		rest = strings.TrimSuffix(rest, "/")
		seg = s
	}
}

// cgroupMountRoots returns the roots of the cgroup and cgroup2 mounts in
// /proc/<pid>/mountinfo, except "/" (the whole hierarchy, which names
// nothing). A missing file gives none.
func (l *Locator) cgroupMountRoots(pid int32) ([]string, error) {
	file := ProcFile(l.ProcDir, pid, "mountinfo")
	data, err := os.ReadFile(file)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("pid %d: read mountinfo: %w", pid, err)
	}
	var roots []string
	for n := 1; len(data) > 0; n++ {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		if len(line) == 0 {
			continue
		}
		root, fsType, err := parseMountInfoLine(string(line))
		if err != nil {
			return nil, fmt.Errorf("pid %d: mountinfo line %d: %w", pid, n, err)
		}
		if l.Verbose {
			l.log().Debug("PID mount enumerated", "pid", pid, "index", n, "type", fsType, "root", root)
		}
		if (fsType == "cgroup" || fsType == "cgroup2") && root != "/" {
			roots = append(roots, root)
		}
	}
	return roots, nil
}

// parseMountInfoLine returns the root (field 4) and file system type (the
// field after the "-" separator) of a mountinfo line (proc(5)):
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// Fields are separated by single spaces (a space in a path is written
// \040), and the mount source after the type may be empty, so the line is
// split on each space rather than on runs of them.
func parseMountInfoLine(line string) (root, fsType string, err error) {
	fields := strings.Split(line, " ")
	sep := slices.Index(fields, "-")
	switch {
	case sep < 0:
		return "", "", fmt.Errorf("%s has no \"-\" separator", clip.Quote(line))
	case sep < 6:
		return "", "", fmt.Errorf("%s has fewer than 6 fields before \"-\"", clip.Quote(line))
	case sep+1 >= len(fields) || fields[sep+1] == "":
		return "", "", fmt.Errorf("%s has no file system type", clip.Quote(line))
	}
	return unescapeOctal(fields[3]), fields[sep+1], nil
}

// unescapeOctal undoes the kernel's \ooo escapes of space, tab, newline
// and backslash in mountinfo paths.
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
