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
// one in a CGO_ENABLED=0 build) reads /etc/passwd and /etc/group, and are
// cached per ID (see Config.NameCacheTTL). The process's own IDs are read
// from /proc/<pid>/status on every call; attestation results are never
// cached.
package unix

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/peercred"
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
	// NameCacheTTL bounds how long a user or group name resolved for an
	// ID (or the absence of one) is reused: 0 means DefaultNameCacheTTL,
	// negative disables the cache. Whatever the TTL, cached names are
	// dropped as soon as /etc/passwd or /etc/group changes (checked with
	// a stat on every attestation). Only names are cached: the process's
	// IDs are read from /proc on every call.
	NameCacheTTL time.Duration
	// Clock times NameCacheTTL; nil is the real clock.
	Clock clock.Clock
	// Log receives debug messages; nil discards them.
	Log *slog.Logger
	// ProcDir is the proc filesystem root; "" means /proc.
	ProcDir string
}

// Attestor produces unix selectors for a PID. It is safe for concurrent
// use.
type Attestor struct {
	cfg    Config
	log    *slog.Logger
	users  *nameCache
	groups *nameCache
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
	return &Attestor{
		cfg:    cfg,
		log:    log,
		users:  newNameCache("/etc/passwd", lookupUser, cfg.NameCacheTTL, cfg.Clock),
		groups: newNameCache("/etc/group", lookupGroup, cfg.NameCacheTTL, cfg.Clock),
	}
}

// Attest returns the selectors of process pid. It fails when the process
// status cannot be read, or when DiscoverWorkloadPath is on and the
// executable cannot be resolved or read.
func (a *Attestor) Attest(ctx context.Context, pid int32) ([]selector.Selector, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("unix attestor: invalid pid %d", pid)
	}
	var groupBuf [32]uint32
	st, err := readStatus(a.cfg.ProcDir, pid, groupBuf[:0])
	if err != nil {
		return nil, fmt.Errorf("unix attestor: pid %d: %w", pid, err)
	}

	n := 4 + 2*len(st.groups)
	if a.cfg.DiscoverWorkloadPath {
		n += 2
	}
	sels := make([]selector.Selector, 0, n)
	add := func(kind, value string) {
		sels = append(sels, selector.Selector{Type: Type, Value: kind + ":" + value})
	}
	add("uid", formatID(st.uid))
	if name, ok := a.users.name(st.uid); ok {
		add("user", name)
	}
	add("gid", formatID(st.gid))
	if name, ok := a.groups.name(st.gid); ok {
		add("group", name)
	}
	for _, sg := range st.groups {
		add("supplementary_gid", formatID(sg))
		if name, ok := a.groups.name(sg); ok {
			add("supplementary_group", name)
		}
	}

	if a.cfg.DiscoverWorkloadPath {
		procPath := a.cfg.ProcDir + "/" + strconv.FormatInt(int64(pid), 10)
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

func formatID(id uint32) string { return strconv.FormatUint(uint64(id), 10) }

type procStatus struct {
	uid, gid uint32
	groups   []uint32
}

// statusBufs holds buffers for /proc/<pid>/status, which is 1–2 KiB unless
// the process has very many supplementary groups.
var statusBufs = sync.Pool{New: func() any { b := make([]byte, 4096); return &b }}

// readStatus reads /proc/<pid>/status with one read into a pooled buffer
// (the whole file, re-read with os.ReadFile only when it does not fit) and
// parses it, appending the supplementary groups to groups.
func readStatus(procDir string, pid int32, groups []uint32) (procStatus, error) {
	bp := statusBufs.Get().(*[]byte)
	defer statusBufs.Put(bp)
	n, err := peercred.ReadProcFile(procDir, pid, "status", *bp)
	data := (*bp)[:n]
	if errors.Is(err, peercred.ErrShortBuffer) {
		data, err = os.ReadFile(procDir + "/" + strconv.FormatInt(int64(pid), 10) + "/status")
	}
	if err != nil {
		return procStatus{}, fmt.Errorf("read process status: %w", err)
	}
	return parseStatus(data, groups)
}

// parseStatus extracts the effective UID/GID and supplementary groups from
// the contents of /proc/<pid>/status. "Uid:" and "Gid:" list real,
// effective, saved and filesystem IDs; like SPIRE, the effective one is
// used. The supplementary groups are appended to groups.
func parseStatus(data []byte, groups []uint32) (procStatus, error) {
	st := procStatus{groups: groups}
	var haveUID, haveGID bool
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		key, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		var err error
		switch string(key) { // no allocation: the conversion only feeds the comparison
		case "Uid":
			st.uid, err = pickID(value)
			haveUID = err == nil
		case "Gid":
			st.gid, err = pickID(value)
			haveGID = err == nil
		case "Groups":
			for f, rest := nextField(value); f != nil; f, rest = nextField(rest) {
				g, ok := parseID(f)
				if !ok {
					return procStatus{}, fmt.Errorf("process status: bad group %q", f)
				}
				st.groups = append(st.groups, g)
			}
		}
		if err != nil {
			return procStatus{}, fmt.Errorf("process status %s: %w", key, err)
		}
	}
	if !haveUID || !haveGID {
		return procStatus{}, errors.New("process status has no Uid or Gid line")
	}
	return st, nil
}

// pickID returns the effective ID of a "Uid:"/"Gid:" value: the second
// field, or the only one.
func pickID(value []byte) (uint32, error) {
	first, rest := nextField(value)
	if first == nil {
		return 0, errors.New("no ids")
	}
	id := first
	if second, _ := nextField(rest); second != nil {
		id = second
	}
	v, ok := parseID(id)
	if !ok {
		return 0, fmt.Errorf("bad id %q", id)
	}
	return v, nil
}

// nextField returns the first tab- or space-separated field of b and what
// follows it; field is nil when there is none.
func nextField(b []byte) (field, rest []byte) {
	i := 0
	for i < len(b) && (b[i] == ' ' || b[i] == '\t') {
		i++
	}
	if i == len(b) {
		return nil, nil
	}
	j := i
	for j < len(b) && b[j] != ' ' && b[j] != '\t' {
		j++
	}
	return b[i:j], b[j:]
}

// parseID parses a decimal 32-bit ID.
func parseID(b []byte) (uint32, bool) {
	if len(b) == 0 || len(b) > 10 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	if v > math.MaxUint32 {
		return 0, false
	}
	return uint32(v), true
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
