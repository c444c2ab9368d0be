package cache

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/keys"
)

// FileName is the name of the persisted cache inside Config.Dir.
const FileName = "workload-cache.json"

const diskVersion = 1

type diskState struct {
	Version     int                        `json:"version"`
	TrustDomain spiffeid.TrustDomain       `json:"trust_domain"`
	Entries     []*Entry                   `json:"entries"`
	Bundles     map[string]json.RawMessage `json:"bundles"`
	SVIDs       map[string]diskSVID        `json:"svids"`
	// BundlesUpdatedAt is each bundle's BundleUpdate.UpdatedAt (absent
	// when unknown, and in files of earlier versions).
	BundlesUpdatedAt map[string]time.Time `json:"bundles_updated_at,omitempty"`
}

type diskSVID struct {
	Chain    [][]byte `json:"chain"` // DER, leaf first
	Key      []byte   `json:"key"`   // PKCS#8 DER
	Revision int64    `json:"entry_revision"`
}

// Path returns the file the cache persists to, or "" when not persisted.
func (c *Cache) Path() string {
	if c.cfg.Dir == "" {
		return ""
	}
	return filepath.Join(c.cfg.Dir, FileName)
}

// snapshot returns the state to persist; nil while revoked (nothing is
// written then: Revoke deleted the file).
func (c *Cache) snapshot() (*diskState, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.revoked {
		return nil, nil
	}
	st := &diskState{
		Version:     diskVersion,
		TrustDomain: c.cfg.TrustDomain,
		Entries:     make([]*Entry, 0, len(c.entries)),
		Bundles:     make(map[string]json.RawMessage, len(c.bundles)),
		SVIDs:       make(map[string]diskSVID, len(c.svids)),
	}
	for _, r := range c.entries {
		st.Entries = append(st.Entries, r.entry)
	}
	for td, r := range c.bundles {
		if r.bundle.Empty() {
			// A bundle without authorities marshals without "keys",
			// which spiffebundle.Parse (rightly) refuses: writing it would
			// make the whole file unloadable. It trusts nothing anyway.
			continue
		}
		raw, err := r.bundle.Marshal()
		if err != nil {
			return nil, fmt.Errorf("marshal bundle of %q: %w", td, err)
		}
		st.Bundles[td.String()] = raw
		if !r.updatedAt.IsZero() {
			if st.BundlesUpdatedAt == nil {
				st.BundlesUpdatedAt = make(map[string]time.Time, len(c.bundles))
			}
			st.BundlesUpdatedAt[td.String()] = r.updatedAt
		}
	}
	for id, s := range c.svids {
		key, err := x509.MarshalPKCS8PrivateKey(s.key)
		if err != nil {
			// A key that cannot be exported (hardware-backed) is simply
			// not persisted; the SVID is re-issued after a restart.
			c.log.Warn("X509-SVID key cannot be persisted", "entry_id", id, "error", err)
			continue
		}
		ds := diskSVID{Key: key, Revision: s.revision}
		for _, cert := range s.chain {
			ds.Chain = append(ds.Chain, cert.Raw)
		}
		st.SVIDs[id] = ds
	}
	return st, nil
}

// persist writes the current state to disk (a no-op without Dir).
func (c *Cache) persist() error {
	if c.cfg.Dir == "" {
		return nil
	}
	c.persistMu.Lock()
	defer c.persistMu.Unlock()
	st, err := c.snapshot()
	if err != nil || st == nil {
		return err
	}
	data, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode agent cache: %w", err)
	}
	return keys.WriteFileAtomic(c.cfg.Dir, FileName, data)
}

// Load restores the persisted state, replacing what the cache holds, and
// notifies subscribers. A missing file is not an error (first start). SVIDs
// that have expired, or whose entry is absent or has another SPIFFE ID, are
// not restored, nor are bundles without authorities (never persisted). Bundles and entries that fail to parse make Load fail, with
// nothing applied: the caller may log it and start empty (the server will
// resend everything).
func (c *Cache) Load() error {
	path := c.Path()
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read agent cache: %w", err)
	}
	var st diskState
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("decode agent cache %s: %w", path, err)
	}
	if st.Version != diskVersion {
		return fmt.Errorf("agent cache %s has version %d, want %d", path, st.Version, diskVersion)
	}
	if st.TrustDomain != c.cfg.TrustDomain {
		return fmt.Errorf("agent cache %s is for trust domain %s, not %q", path, clip.Quote(st.TrustDomain.Name()), c.cfg.TrustDomain)
	}

	entries := make(map[string]*entryRecord, len(st.Entries))
	for _, e := range st.Entries {
		if err := e.validate(); err != nil {
			return fmt.Errorf("agent cache %s: %w", path, err)
		}
		entries[e.ID] = &entryRecord{entry: e}
	}
	bundles := make(map[spiffeid.TrustDomain]*bundleRecord, len(st.Bundles))
	for name, raw := range st.Bundles {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return fmt.Errorf("agent cache %s: bundle key: %w", path, err)
		}
		b, err := spiffebundle.Parse(td, raw)
		if err != nil {
			return fmt.Errorf("agent cache %s: bundle of %s: %w", path, clip.Quote(td.Name()), err)
		}
		if b.Empty() { // only keys of uses Parse skips: as if absent (see snapshot)
			continue
		}
		bundles[td] = &bundleRecord{bundle: b, updatedAt: st.BundlesUpdatedAt[name]}
	}
	now := c.clk.Now()
	svids := make(map[string]*svidRecord, len(st.SVIDs))
	for id, ds := range st.SVIDs {
		r, ok := entries[id]
		if !ok {
			continue
		}
		s, err := parseDiskSVID(ds)
		if err != nil {
			c.log.Warn("Dropping unreadable persisted X509-SVID", "entry_id", id, "error", err)
			continue
		}
		if !now.Before(s.notAfter()) {
			c.log.Debug("Dropping expired persisted X509-SVID", "entry_id", id, "not_after", s.notAfter())
			continue
		}
		if err := checkSVID(r.entry, &X509SVID{Chain: s.chain, PrivateKey: s.key}); err != nil {
			c.log.Warn("Dropping inconsistent persisted X509-SVID", "entry_id", id, "error", err)
			continue
		}
		svids[id] = s
	}

	var own *spiffebundle.Bundle
	if r, ok := bundles[c.cfg.TrustDomain]; ok {
		own = r.bundle
	}
	jwts := c.loadJWTs(entries, own, now)

	c.mu.Lock()
	c.entries = entries
	c.svids = svids
	c.bundles = bundles
	for _, r := range c.entries {
		r.gen = c.nextGen()
	}
	for _, s := range c.svids {
		s.gen = c.nextGen()
	}
	for _, b := range c.bundles {
		b.gen = c.nextGen()
	}
	c.mu.Unlock()
	c.jwtMu.Lock()
	c.jwts = jwts
	c.jwtMu.Unlock()
	c.log.Info("Restored agent cache", "path", path, "entries", len(entries),
		"x509_svids", len(svids), "bundles", len(bundles), "jwt_svids", len(jwts))
	c.notifyAll()
	select {
	case c.kick <- struct{}{}:
	default:
	}
	return nil
}

func parseDiskSVID(ds diskSVID) (*svidRecord, error) {
	if len(ds.Chain) == 0 {
		return nil, errors.New("empty chain")
	}
	s := &svidRecord{revision: ds.Revision}
	for _, der := range ds.Chain {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		s.chain = append(s.chain, cert)
	}
	key, err := x509.ParsePKCS8PrivateKey(ds.Key)
	if err != nil {
		return nil, fmt.Errorf("parse key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key type %T is not a signer", key)
	}
	s.key = signer
	return s, nil
}
