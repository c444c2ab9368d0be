// Package unix is the agent's "unix" workload attestor, selector-compatible
// with SPIRE's plugin of the same name. For a caller PID it produces
// selectors of type "unix":
//
//	uid:<n>                  effective UID (from /proc/<pid>/status)
//	user:<name>              its user name, when /etc/passwd knows it
//	gid:<n>                  effective GID
//	group:<name>             its group name, when /etc/group knows it
//	supplementary_gid:<n>    one per supplementary group ("Groups:" line)
//	supplementary_group:<n>  its name, when known
//
// With Config.DiscoverWorkloadPath, also:
//
//	path:<exe>               the executable, readlink /proc/<pid>/exe
//	sha256:<hex>             SHA-256 of that executable, read through
//	                         /proc/<pid>/exe (works across mount namespaces)
//
// WorkloadSizeLimit follows SPIRE's workload_size_limit: 0 means no limit, a
// negative value disables hashing. Unlike SPIRE, which fails the whole
// attestation when the binary is larger than the limit, an oversized binary
// only loses its sha256 selector (the other selectors are still returned).
//
// Names are resolved with os/user, whose pure-Go implementation (the only
// one in a CGO_ENABLED=0 build) reads /etc/passwd and /etc/group.
package unix

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/user"
	"strconv"
	"strings"

	"github.com/sigil-spiffe/sigil/internal/selector"
)

// Type is the selector type this attestor produces.
const Type = "unix"

// Config configures the attestor (plugin_data of WorkloadAttestor "unix").
type Config struct {
	// DiscoverWorkloadPath adds path and sha256 selectors. The agent needs
	// permission to read /proc/<pid>/exe of workloads (root, or the same
	// user).
	DiscoverWorkloadPath bool
	// WorkloadSizeLimit bounds the bytes hashed for sha256: 0 = no limit,
	// negative = never hash.
	WorkloadSizeLimit int64
	// Log receives debug messages; nil discards them.
	Log *slog.Logger
	// ProcDir is the proc filesystem root; "" means /proc.
	ProcDir string
}

// Attestor produces unix selectors for a PID.
type Attestor struct {
	cfg Config
	log *slog.Logger
}

// New returns an attestor.
func New(cfg Config) *Attestor {
	if cfg.ProcDir == "" {
		cfg.ProcDir = "/proc"
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Attestor{cfg: cfg, log: log}
}

// Attest returns the selectors of process pid. It fails when the process
// status cannot be read, or when DiscoverWorkloadPath is on and the
// executable cannot be resolved or read.
func (a *Attestor) Attest(ctx context.Context, pid int32) ([]selector.Selector, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("unix attestor: invalid pid %d", pid)
	}
	procPath := a.cfg.ProcDir + "/" + strconv.FormatInt(int64(pid), 10)
	st, err := readStatus(procPath + "/status")
	if err != nil {
		return nil, fmt.Errorf("unix attestor: pid %d: %w", pid, err)
	}

	var sels []selector.Selector
	add := func(kind, value string) {
		sels = append(sels, selector.Selector{Type: Type, Value: kind + ":" + value})
	}
	add("uid", st.uid)
	if u, err := user.LookupId(st.uid); err == nil {
		add("user", u.Username)
	}
	add("gid", st.gid)
	if g, err := user.LookupGroupId(st.gid); err == nil {
		add("group", g.Name)
	}
	for _, sg := range st.groups {
		add("supplementary_gid", sg)
		if g, err := user.LookupGroupId(sg); err == nil {
			add("supplementary_group", g.Name)
		}
	}

	if a.cfg.DiscoverWorkloadPath {
		exe, err := os.Readlink(procPath + "/exe")
		if err != nil {
			return nil, fmt.Errorf("unix attestor: pid %d: workload path: %w", pid, err)
		}
		add("path", exe)
		if a.cfg.WorkloadSizeLimit >= 0 {
			digest, err := hashFile(ctx, procPath+"/exe", a.cfg.WorkloadSizeLimit)
			switch {
			case errors.Is(err, errTooLarge):
				a.log.Debug("workload binary exceeds workload_size_limit; no sha256 selector",
					"pid", pid, "path", exe, "limit", a.cfg.WorkloadSizeLimit)
			case err != nil:
				return nil, fmt.Errorf("unix attestor: pid %d: hash workload binary: %w", pid, err)
			default:
				add("sha256", digest)
			}
		}
	}
	return sels, nil
}

type procStatus struct {
	uid, gid string
	groups   []string
}

// readStatus extracts the effective UID/GID and supplementary groups from
// /proc/<pid>/status. "Uid:" and "Gid:" list real, effective, saved and
// filesystem IDs; like SPIRE, the effective one is used.
func readStatus(path string) (procStatus, error) {
	f, err := os.Open(path)
	if err != nil {
		return procStatus{}, fmt.Errorf("read process status: %w", err)
	}
	defer f.Close()
	var st procStatus
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(value)
		switch key {
		case "Uid":
			st.uid, err = pickID(fields)
		case "Gid":
			st.gid, err = pickID(fields)
		case "Groups":
			for _, g := range fields {
				if _, perr := strconv.ParseUint(g, 10, 32); perr != nil {
					return procStatus{}, fmt.Errorf("process status: bad group %q", g)
				}
			}
			st.groups = fields
		}
		if err != nil {
			return procStatus{}, fmt.Errorf("process status %s: %w", key, err)
		}
	}
	if err := sc.Err(); err != nil {
		return procStatus{}, fmt.Errorf("read process status: %w", err)
	}
	if st.uid == "" || st.gid == "" {
		return procStatus{}, errors.New("process status has no Uid or Gid line")
	}
	return st, nil
}

func pickID(fields []string) (string, error) {
	var id string
	switch len(fields) {
	case 0:
		return "", errors.New("no ids")
	case 1:
		id = fields[0]
	default:
		id = fields[1]
	}
	if _, err := strconv.ParseUint(id, 10, 32); err != nil {
		return "", fmt.Errorf("bad id %q", id)
	}
	return id, nil
}

var errTooLarge = errors.New("file exceeds size limit")

// hashFile returns the hex SHA-256 of path, or errTooLarge when limit > 0 and
// the file is larger. The limit is enforced while reading too, so a file
// growing after the size check cannot make us hash more than limit bytes.
func hashFile(ctx context.Context, path string, limit int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	if limit > 0 && fi.Size() > limit {
		return "", errTooLarge
	}
	h := sha256.New()
	var r io.Reader = f
	if limit > 0 {
		r = io.LimitReader(f, limit+1)
	}
	n, err := io.Copy(h, ctxReader{ctx: ctx, r: r})
	if err != nil {
		return "", err
	}
	if limit > 0 && n > limit {
		return "", errTooLarge
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// ctxReader stops a long hash when the caller gives up.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
