// Package cgroup finds which container (and which Kubernetes pod) a
// process runs in, from its cgroup membership: /proc/<pid>/cgroup, and,
// for a process in the agent's own cgroup, /proc/<pid>/mountinfo. It is
// shared by the workload attestors that name containers (docker, and k8s).
//
// # What the files look like
//
// /proc/<pid>/cgroup has one line per hierarchy, "id:controllers:path"
// (cgroups(7)). On cgroup v1 there is one line per mounted hierarchy
// ("4:cpu,cpuacct:/docker/<id>", "1:name=systemd:/..."); on v2 (the
// unified hierarchy) a single "0::/path"; a hybrid host has both. The path
// is relative to the reader's cgroup namespace root: a process outside the
// agent's namespace root shows as "/../<...>", one in the agent's own
// cgroup as "/".
//
// Where the container ID sits in the path depends on the runtime and the
// cgroup driver (the testdata directory holds one example of each, with
// the documentation its shape comes from):
//
//	docker, cgroupfs driver          /docker/<id>
//	docker, systemd driver           /system.slice/docker-<id>.scope
//	kubelet cgroupfs + containerd    /kubepods/besteffort/pod<uid>/<id>
//	kubelet systemd + containerd     /kubepods.slice/kubepods-burstable.slice/
//	                                   kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope
//	kubelet systemd + CRI-O          .../crio-<id>.scope (and crio-conmon-<id>.scope for its monitor)
//	podman (rootful, rootless)       /machine.slice/libpod-<id>.scope,
//	                                   /user.slice/user-<uid>.slice/user@<uid>.service/.../libpod-<id>.scope
//
// # How the container is found
//
// By default (SPIRE's "new container locator", which is also its
// default), each path is walked from its last segment backwards to the
// first segment holding a 64-hex-digit word, the container ID; with
// Locator.PodUID the segments before it are then searched for "pod<uid>"
// (dashes or, from the systemd driver, underscores). Every line must agree
// on the container (and pod); a line naming a pod overrides lines that do
// not (a kind node: the inner pod's lines beside the outer docker
// container's), and conflicting answers are an error. Only when the
// process's every cgroup path is "/" (it shares the agent's cgroup, as in
// a sidecar with its own cgroup namespace) are the roots of its cgroup
// mounts in /proc/<pid>/mountinfo searched instead. SPIRE also searches
// mountinfo for any process whose cgroup names no container; Sigil does
// not, because an unprivileged user can write its own mountinfo (a bind
// mount in a user namespace) but cannot put itself in the agent's cgroup.
//
// Alternatively, Matchers (SPIRE's container_id_cgroup_matchers) name where
// the ID is: patterns such as "/docker/<id>" (SPIRE's grammar) or regular
// expressions with one capture group (a Sigil extension).
//
// # Trust
//
// The kernel writes /proc/<pid>/cgroup, but a cgroup's name is chosen by
// whoever creates it, and systemd delegates subtrees to unprivileged users
// (user@<uid>.service): a user can create a cgroup named like another
// container's ID and move a process into it. A Container therefore carries
// the Scopes its ID was read from (each path up to the segment holding
// the ID), and a caller that can learn a process known to be in the
// container (docker: the container's init, State.Pid) checks that both
// locate to the same container in the same scopes (Container.Same).
package cgroup

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/sigil-spiffe/sigil/internal/clip"
)

// Entry is one line of /proc/<pid>/cgroup.
type Entry struct {
	// HierarchyID is the hierarchy's number, "0" for the unified (v2) one.
	HierarchyID string
	// Controllers are the hierarchy's controllers ("cpu,cpuacct",
	// "name=systemd"); empty on v2.
	Controllers string
	// Path is the cgroup, relative to the reader's cgroup namespace root.
	Path string
}

// maxCgroupFile bounds what Read accepts: a v1 host with every controller
// mounted and long Kubernetes paths is a few KiB.
const maxCgroupFile = 64 << 10

// Parse parses the contents of a /proc/<pid>/cgroup file. Every non-empty
// line must be "id:controllers:path" with a numeric id and an absolute
// path (a path may contain ':').
func Parse(data []byte) ([]Entry, error) {
	var out []Entry
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
		id, rest, ok1 := bytes.Cut(line, []byte(":"))
		ctrl, path, ok2 := bytes.Cut(rest, []byte(":"))
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("cgroup line %d: %s is not id:controllers:path", n, clip.Quote(string(line)))
		}
		if _, err := strconv.ParseUint(string(id), 10, 32); err != nil {
			return nil, fmt.Errorf("cgroup line %d: hierarchy id %s is not a number", n, clip.Quote(string(id)))
		}
		if len(path) == 0 || path[0] != '/' {
			return nil, fmt.Errorf("cgroup line %d: path %s is not absolute", n, clip.Quote(string(path)))
		}
		out = append(out, Entry{HierarchyID: string(id), Controllers: string(ctrl), Path: string(path)})
	}
	if len(out) == 0 {
		return nil, errors.New("cgroup file has no entries")
	}
	return out, nil
}

// ProcFile is the path of a process's file in the proc file system rooted
// at procDir ("" is /proc).
func ProcFile(procDir string, pid int32, name string) string {
	if procDir == "" {
		procDir = "/proc"
	}
	return procDir + "/" + strconv.FormatInt(int64(pid), 10) + "/" + name
}

// Read reads and parses /proc/<pid>/cgroup under procDir ("" is /proc). A
// process that does not exist gives an error satisfying
// errors.Is(err, os.ErrNotExist).
func Read(procDir string, pid int32) ([]Entry, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("invalid pid %d", pid)
	}
	data, err := readSmall(ProcFile(procDir, pid, "cgroup"))
	if err != nil {
		return nil, err
	}
	entries, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("pid %d: %w", pid, err)
	}
	return entries, nil
}

// readSmall reads a file of at most maxCgroupFile bytes.
func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxCgroupFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxCgroupFile {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxCgroupFile)
	}
	return data, nil
}
