package fsdelivery

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/clock"
)

// DefaultFileMode is the mode of the certificate and bundle files when a
// Target leaves FileMode zero.
const DefaultFileMode fs.FileMode = 0o600

// Retry back-off after a failed write.
const (
	retryMin = 5 * time.Second
	retryMax = 5 * time.Minute
)

// Target is one identity delivered to one directory.
type Target struct {
	// Name labels the target in logs (the config block's label).
	Name string
	// SPIFFEID is the identity to deliver; the agent must hold an entry for it.
	SPIFFEID spiffeid.ID
	// Directory is the absolute directory the files go to.
	Directory string
	// FileMode is the permission of the certificate and bundle files: 0
	// means DefaultFileMode; only bits of 0644 are allowed and owner read
	// is required. The key is always 0600.
	FileMode fs.FileMode
	// UID and GID, when not -1, own everything written (chown).
	UID, GID int
}

// Cache is what fsdelivery reads from the agent's workload cache.
type Cache interface {
	TrustDomain() spiffeid.TrustDomain
	Watch() (changes <-chan struct{}, stop func())
	Entries() []*cache.Entry
	X509SVID(entryID string) (*cache.X509SVID, bool)
	Bundle(td spiffeid.TrustDomain) (*spiffebundle.Bundle, bool)
	// Revoked reports that the server revoked the agent: every delivered
	// file must go (see cache.Cache.Revoke).
	Revoked() bool
}

// Config configures a Delivery.
type Config struct {
	Targets []Target
	Cache   Cache
	// Log; nil discards. Never receives key material.
	Log *slog.Logger
	// Clock; nil is the real clock.
	Clock clock.Clock
}

// Delivery keeps the files of every target in step with the cache.
type Delivery struct {
	cache   Cache
	log     *slog.Logger
	clk     clock.Clock
	targets []*target
}

// target is a Target plus what was last done for it.
type target struct {
	Target
	mode fs.FileMode // resolved FileMode

	written  [sha256.Size]byte // fingerprint of the last generation written
	hasWrite bool
	notAfter time.Time // leaf NotAfter of the last generation written
	waiting  string    // last reason for not writing, logged on change
	expired  bool      // the expiry of the written SVID was logged
	removed  bool      // the files were removed for a revocation
}

// New validates the targets and returns a Delivery; nothing is written
// before Run.
func New(cfg Config) (*Delivery, error) {
	if cfg.Cache == nil {
		return nil, errors.New("fsdelivery: no cache")
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Delivery{cache: cfg.Cache, log: log, clk: clock.OrReal(cfg.Clock)}
	td := cfg.Cache.TrustDomain()
	dirs := map[string]string{}
	var errs []error
	for _, t := range cfg.Targets {
		if err := ValidateTarget(t, td); err != nil {
			errs = append(errs, err)
			continue
		}
		dir := filepath.Clean(t.Directory)
		if prev, dup := dirs[dir]; dup {
			errs = append(errs, fmt.Errorf("filesystem delivery %q: directory %q is also used by %q", t.Name, dir, prev))
			continue
		}
		dirs[dir] = t.Name
		t.Directory = dir
		mode := t.FileMode
		if mode == 0 {
			mode = DefaultFileMode
		}
		d.targets = append(d.targets, &target{Target: t, mode: mode})
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return d, nil
}

// ValidateTarget checks one target on its own (uniqueness of directories
// is New's business): a SPIFFE ID in trust domain td, an absolute
// directory, a FileMode within 0644 that the owner can read, and UID/GID
// of -1 or more.
func ValidateTarget(t Target, td spiffeid.TrustDomain) error {
	var errs []error
	if t.SPIFFEID.IsZero() {
		errs = append(errs, errors.New("spiffe_id must be set"))
	} else if !td.IsZero() && !t.SPIFFEID.MemberOf(td) {
		errs = append(errs, fmt.Errorf("spiffe_id %q is not in the agent's trust domain %q", t.SPIFFEID, td.Name()))
	}
	if t.Directory == "" {
		errs = append(errs, errors.New("directory must be set"))
	} else if !filepath.IsAbs(t.Directory) {
		errs = append(errs, fmt.Errorf("directory %q must be an absolute path", t.Directory))
	}
	if err := ValidateFileMode(t.FileMode); err != nil {
		errs = append(errs, err)
	}
	if t.UID < -1 {
		errs = append(errs, fmt.Errorf("uid %d is invalid", t.UID))
	}
	if t.GID < -1 {
		errs = append(errs, fmt.Errorf("gid %d is invalid", t.GID))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("filesystem delivery %q: %w", t.Name, err)
	}
	return nil
}

// ValidateFileMode checks a certificate/bundle file mode: 0 (default) or
// owner-readable with no bits outside 0644.
func ValidateFileMode(m fs.FileMode) error {
	if m == 0 {
		return nil
	}
	if m&^0o644 != 0 {
		return fmt.Errorf("file_mode %04o is not allowed: only read for group/other and read-write for the owner (at most 0644)", uint32(m))
	}
	if m&0o400 == 0 {
		return fmt.Errorf("file_mode %04o must let the owner read", uint32(m))
	}
	return nil
}

// Run writes every target's files now and again after every change in the
// cache, until ctx ends. A failing target is logged and retried with
// back-off; it does not stop the others or make Run fail.
func (d *Delivery) Run(ctx context.Context) error {
	if len(d.targets) == 0 {
		<-ctx.Done()
		return nil
	}
	changes, stop := d.cache.Watch()
	defer stop()
	backoff := time.Duration(0)
	for {
		var retry <-chan time.Time
		if err := d.syncAll(); err != nil {
			backoff = min(max(2*backoff, retryMin), retryMax)
			retry = d.clk.After(backoff)
		} else {
			backoff = 0
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changes:
		case <-retry:
		}
	}
}

// syncAll brings every target up to date and reports whether any failed.
func (d *Delivery) syncAll() error {
	var errs []error
	for _, t := range d.targets {
		if err := d.sync(t); err != nil {
			d.log.Error("Failed to write SVID files", "target", t.Name, "spiffe_id", t.SPIFFEID.String(), "directory", t.Directory, "error", err)
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// state is what one generation holds.
type state struct {
	entryID   string
	svid      *cache.X509SVID
	bundle    *spiffebundle.Bundle
	federated []*spiffebundle.Bundle // sorted by trust domain
}

// current gathers the state to deliver for t, or a reason it cannot be
// delivered yet.
func (d *Delivery) current(t *target, now time.Time) (*state, string) {
	var (
		st      state
		fedTDs  = map[spiffeid.TrustDomain]struct{}{}
		entries int
	)
	for _, e := range d.cache.Entries() {
		if e.SPIFFEID != t.SPIFFEID {
			continue
		}
		entries++
		for _, td := range e.FederatesWith {
			fedTDs[td] = struct{}{}
		}
		s, ok := d.cache.X509SVID(e.ID)
		if !ok || len(s.Chain) == 0 || !now.Before(s.Chain[0].NotAfter) {
			continue
		}
		if st.svid == nil || s.Chain[0].NotAfter.After(st.svid.Chain[0].NotAfter) ||
			(s.Chain[0].NotAfter.Equal(st.svid.Chain[0].NotAfter) && e.ID < st.entryID) {
			st.svid, st.entryID = s, e.ID
		}
	}
	switch {
	case entries == 0:
		return nil, "the agent holds no entry for this SPIFFE ID"
	case st.svid == nil:
		return nil, "no unexpired X509-SVID for this SPIFFE ID yet"
	}
	own := d.cache.TrustDomain()
	b, ok := d.cache.Bundle(own)
	if !ok || len(b.X509Authorities()) == 0 {
		return nil, "no X.509 bundle for the agent's trust domain yet"
	}
	st.bundle = b
	tds := make([]spiffeid.TrustDomain, 0, len(fedTDs))
	for td := range fedTDs {
		if td != own {
			tds = append(tds, td)
		}
	}
	sort.Slice(tds, func(i, j int) bool { return tds[i].Compare(tds[j]) < 0 })
	for _, td := range tds {
		if fb, ok := d.cache.Bundle(td); ok {
			st.federated = append(st.federated, fb)
		}
	}
	return &st, ""
}

// sync writes a new generation for t when its state changed, or removes
// t's files while the agent is revoked.
func (d *Delivery) sync(t *target) error {
	if d.cache.Revoked() {
		return d.revoke(t)
	}
	t.removed = false
	now := d.clk.Now()
	st, why := d.current(t, now)
	if st == nil {
		if why != t.waiting {
			t.waiting = why
			d.log.Warn("Not writing SVID files", "target", t.Name, "spiffe_id", t.SPIFFEID.String(), "directory", t.Directory, "reason", why)
		}
		if t.hasWrite && !now.Before(t.notAfter) && !t.expired {
			t.expired = true
			d.log.Error("The X509-SVID on disk has expired and no new one is available", "target", t.Name, "spiffe_id", t.SPIFFEID.String(), "directory", t.Directory, "not_after", t.notAfter)
		}
		return nil
	}
	t.waiting = ""
	files, err := render(st)
	if err != nil {
		return err
	}
	fp := fingerprint(files)
	if t.hasWrite && fp == t.written {
		return nil
	}
	if !t.hasWrite && adoptCurrent(t, files) {
		// A restarted agent finds exactly these files already in place:
		// no new generation, so applications see no spurious rotation.
		t.written, t.hasWrite, t.expired = fp, true, false
		t.notAfter = st.svid.Chain[0].NotAfter
		d.log.Info("SVID files on disk are up to date", "target", t.Name, "spiffe_id", t.SPIFFEID.String(), "directory", t.Directory,
			"generation", currentGeneration(t.Directory), "serial", st.svid.Chain[0].SerialNumber.String(), "not_after", st.svid.Chain[0].NotAfter)
		return nil
	}
	gen, err := writeGeneration(t, files)
	if err != nil {
		return err
	}
	t.written, t.hasWrite, t.expired = fp, true, false
	leaf := st.svid.Chain[0]
	t.notAfter = leaf.NotAfter
	fed := make([]string, 0, len(st.federated))
	for _, b := range st.federated {
		fed = append(fed, b.TrustDomain().Name())
	}
	d.log.Info("Wrote SVID files", "target", t.Name, "spiffe_id", t.SPIFFEID.String(), "directory", t.Directory,
		"generation", gen, "entry_id", st.entryID, "serial", leaf.SerialNumber.String(), "not_after", leaf.NotAfter,
		"federated_bundles", fed)
	return nil
}

// revoke removes everything delivered to t (once per revocation): the
// server revoked the agent, so no identity of it may stay on disk.
func (d *Delivery) revoke(t *target) error {
	if t.removed {
		return nil
	}
	if err := removeDelivered(t.Directory); err != nil {
		return fmt.Errorf("remove SVID files of the revoked agent: %w", err)
	}
	t.removed = true
	t.written, t.hasWrite, t.notAfter, t.waiting, t.expired = [sha256.Size]byte{}, false, time.Time{}, "", false
	d.log.Error("Removed the SVID files: the server revoked the agent", "target", t.Name, "spiffe_id", t.SPIFFEID.String(), "directory", t.Directory)
	return nil
}

// fingerprint hashes file names and contents in name order.
func fingerprint(files []file) [sha256.Size]byte {
	sorted := slices.Clone(files)
	slices.SortFunc(sorted, func(a, b file) int { return strings.Compare(a.name, b.name) })
	h := sha256.New()
	for _, f := range sorted {
		fmt.Fprintf(h, "%d:%s:%d:", len(f.name), f.name, len(f.data))
		h.Write(f.data)
	}
	var out [sha256.Size]byte
	copy(out[:], h.Sum(nil))
	return out
}
