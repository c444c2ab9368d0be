package sqlstore

import (
	"bytes"
	"context"
	"crypto/x509"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/datastore"
)

// bundleBlob is the stored encoding of a bundle's contents (JSON; []byte
// fields are base64). The trust domain and sequence number are columns.
type bundleBlob struct {
	X509Authorities []x509Blob `json:"x509_authorities"`
	JWTKeys         []jwtBlob  `json:"jwt_keys"`
	RefreshHint     int64      `json:"refresh_hint,omitempty"`
}

type x509Blob struct {
	ASN1    []byte `json:"asn1"`
	Tainted bool   `json:"tainted,omitempty"`
}

type jwtBlob struct {
	KeyID     string `json:"kid"`
	PublicKey []byte `json:"public_key"`
	ExpiresAt int64  `json:"expires_at,omitempty"`
	Tainted   bool   `json:"tainted,omitempty"`
}

func encodeBundle(b *datastore.Bundle) ([]byte, error) {
	blob := bundleBlob{RefreshHint: b.RefreshHint, X509Authorities: []x509Blob{}, JWTKeys: []jwtBlob{}}
	for _, a := range b.X509Authorities {
		blob.X509Authorities = append(blob.X509Authorities, x509Blob(a))
	}
	for _, k := range b.JWTKeys {
		blob.JWTKeys = append(blob.JWTKeys, jwtBlob(k))
	}
	return json.Marshal(blob)
}

func decodeBundle(td string, data []byte, seq int64) (*datastore.Bundle, error) {
	var blob bundleBlob
	if err := json.Unmarshal(data, &blob); err != nil {
		return nil, fmt.Errorf("decode bundle %q: %w", td, err)
	}
	b := &datastore.Bundle{TrustDomain: td, RefreshHint: blob.RefreshHint, SequenceNumber: uint64(seq)}
	for _, a := range blob.X509Authorities {
		b.X509Authorities = append(b.X509Authorities, datastore.X509Authority(a))
	}
	for _, k := range blob.JWTKeys {
		b.JWTKeys = append(b.JWTKeys, datastore.JWTKey(k))
	}
	return b, nil
}

func validateBundle(b *datastore.Bundle) error {
	if b == nil {
		return errors.New("bundle is nil")
	}
	if b.TrustDomain == "" {
		return errors.New("bundle trust domain is empty")
	}
	if err := checkText("bundle trust domain", b.TrustDomain); err != nil {
		return err
	}
	for _, k := range b.JWTKeys {
		if err := checkText("a JWT key ID", k.KeyID); err != nil {
			return err
		}
	}
	for i, a := range b.X509Authorities {
		if len(a.ASN1) == 0 {
			return fmt.Errorf("bundle %q: X.509 authority %d is empty", b.TrustDomain, i)
		}
	}
	for i, k := range b.JWTKeys {
		if k.KeyID == "" {
			return fmt.Errorf("bundle %q: JWT key %d has no key ID", b.TrustDomain, i)
		}
		if len(k.PublicKey) == 0 {
			return fmt.Errorf("bundle %q: JWT key %s has no public key", b.TrustDomain, clip.Quote(k.KeyID))
		}
	}
	return nil
}

// nextSequence returns the sequence number of a write: one more than the
// stored one, or the caller's when that is higher (a federated bundle
// carries its publisher's sequence number). It never goes backwards.
func nextSequence(stored uint64, given uint64) uint64 {
	return max(stored+1, given)
}

// getBundle reads a bundle; nil when absent. lock is "" or the dialect's
// forUpdate (a write transaction about to change the bundle).
func (s *Store) getBundle(ctx context.Context, q queryer, td, lock string) (*datastore.Bundle, error) {
	var data []byte
	var seq int64
	err := q.QueryRowContext(ctx, s.q("SELECT data, sequence_number FROM bundles WHERE trust_domain = ?"+lock), td).Scan(&data, &seq)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read bundle %q: %w", td, err)
	}
	return decodeBundle(td, data, seq)
}

// putBundle inserts (old == nil) or replaces the bundle with the next
// sequence number and records a bundle event. It returns the stored copy.
func (s *Store) putBundle(ctx context.Context, tx *sql.Tx, old, b *datastore.Bundle) (*datastore.Bundle, error) {
	out := cloneBundle(b)
	var stored uint64
	if old != nil {
		stored = old.SequenceNumber
	}
	out.SequenceNumber = nextSequence(stored, b.SequenceNumber)
	if out.SequenceNumber > 1<<63-1 {
		return nil, fmt.Errorf("bundle %q: sequence number %d: %w (max %d)", b.TrustDomain, out.SequenceNumber, datastore.ErrOutOfRange, int64(1<<63-1))
	}
	data, err := encodeBundle(out)
	if err != nil {
		return nil, fmt.Errorf("encode bundle %q: %w", b.TrustDomain, err)
	}
	now := s.now()
	if old == nil {
		_, err = tx.ExecContext(ctx, s.q("INSERT INTO bundles (trust_domain, data, sequence_number, created_at, updated_at) VALUES (?, ?, ?, ?, ?)"),
			out.TrustDomain, data, int64(out.SequenceNumber), now, now)
	} else {
		_, err = tx.ExecContext(ctx, s.q("UPDATE bundles SET data = ?, sequence_number = ?, updated_at = ? WHERE trust_domain = ?"),
			data, int64(out.SequenceNumber), now, out.TrustDomain)
	}
	if err != nil {
		return nil, fmt.Errorf("write bundle %q: %w", b.TrustDomain, err)
	}
	if err := s.bundleEvent(ctx, tx, out.TrustDomain); err != nil {
		return nil, err
	}
	return out, nil
}

func cloneBundle(b *datastore.Bundle) *datastore.Bundle {
	c := *b
	c.X509Authorities = nil
	for _, a := range b.X509Authorities {
		c.X509Authorities = append(c.X509Authorities, datastore.X509Authority{ASN1: bytes.Clone(a.ASN1), Tainted: a.Tainted})
	}
	c.JWTKeys = nil
	for _, k := range b.JWTKeys {
		k.PublicKey = bytes.Clone(k.PublicKey)
		c.JWTKeys = append(c.JWTKeys, k)
	}
	return &c
}

func (s *Store) bundleEvent(ctx context.Context, tx *sql.Tx, td string) error {
	s.journaled(tx, datastore.ChangeBundles)
	if _, err := tx.ExecContext(ctx, s.q("INSERT INTO bundle_events (trust_domain, created_at) VALUES (?, ?)"), td, s.now()); err != nil {
		return fmt.Errorf("record bundle event: %w", err)
	}
	return nil
}

// CreateBundle stores a new bundle (ErrAlreadyExists if one exists for the
// trust domain). Its sequence number is max(1, b.SequenceNumber).
func (s *Store) CreateBundle(ctx context.Context, b *datastore.Bundle) (*datastore.Bundle, error) {
	if err := validateBundle(b); err != nil {
		return nil, fmt.Errorf("create bundle: %w", err)
	}
	var out *datastore.Bundle
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		old, err := s.getBundle(ctx, tx, b.TrustDomain, s.dialect.forUpdate)
		if err != nil {
			return err
		}
		if old != nil {
			return fmt.Errorf("bundle %q: %w", b.TrustDomain, datastore.ErrAlreadyExists)
		}
		out, err = s.putBundle(ctx, tx, nil, b)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("create bundle: %w", err)
	}
	return out, nil
}

// GetBundle returns the bundle of the trust domain (ErrNotFound if absent).
func (s *Store) GetBundle(ctx context.Context, trustDomain string) (*datastore.Bundle, error) {
	if !isText(trustDomain) {
		return nil, fmt.Errorf("bundle %s: %w", clip.Quote(trustDomain), datastore.ErrNotFound)
	}
	b, err := s.getBundle(ctx, s.r, trustDomain, "")
	if err != nil {
		return nil, fmt.Errorf("get bundle: %w", err)
	}
	if b == nil {
		return nil, fmt.Errorf("bundle %s: %w", clip.Quote(trustDomain), datastore.ErrNotFound)
	}
	return b, nil
}

// ListBundles lists bundles in trust domain order.
func (s *Store) ListBundles(ctx context.Context, p datastore.Page) ([]*datastore.Bundle, string, error) {
	after, err := checkPage(p)
	if err != nil {
		return nil, "", fmt.Errorf("list bundles: %w", err)
	}
	w := &whereBuilder{}
	if after != "" {
		w.add("trust_domain > ?", after)
	}
	limit, largs := limitClause(p)
	var out []*datastore.Bundle
	err = scanRows(ctx, s.reader(ctx), s.q("SELECT trust_domain, data, sequence_number FROM bundles"+w.sql()+" ORDER BY trust_domain"+limit),
		w.params(largs...), func(r *sql.Rows) error {
			var td string
			var data []byte
			var seq int64
			if err := r.Scan(&td, &data, &seq); err != nil {
				return err
			}
			b, err := decodeBundle(td, data, seq)
			if err != nil {
				return err
			}
			out = append(out, b)
			return nil
		})
	if err != nil {
		return nil, "", fmt.Errorf("list bundles: %w", err)
	}
	next := ""
	if p.Size > 0 && len(out) > p.Size {
		out = out[:p.Size]
		next = encodePageToken(out[len(out)-1].TrustDomain)
	}
	return out, next, nil
}

// CountBundles counts the stored bundles.
func (s *Store) CountBundles(ctx context.Context) (int, error) {
	var n int
	if err := s.reader(ctx).QueryRowContext(ctx, "SELECT COUNT(*) FROM bundles").Scan(&n); err != nil {
		return 0, fmt.Errorf("count bundles: %w", err)
	}
	return n, nil
}

// UpdateBundle replaces a stored bundle (ErrNotFound if absent). The new
// sequence number is max(stored+1, b.SequenceNumber).
func (s *Store) UpdateBundle(ctx context.Context, b *datastore.Bundle) (*datastore.Bundle, error) {
	if err := validateBundle(b); err != nil {
		return nil, fmt.Errorf("update bundle: %w", err)
	}
	var out *datastore.Bundle
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		old, err := s.getBundle(ctx, tx, b.TrustDomain, s.dialect.forUpdate)
		if err != nil {
			return err
		}
		if old == nil {
			return fmt.Errorf("bundle %q: %w", b.TrustDomain, datastore.ErrNotFound)
		}
		out, err = s.putBundle(ctx, tx, old, b)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("update bundle: %w", err)
	}
	return out, nil
}

// SetBundle creates or replaces the bundle.
func (s *Store) SetBundle(ctx context.Context, b *datastore.Bundle) (*datastore.Bundle, error) {
	if err := validateBundle(b); err != nil {
		return nil, fmt.Errorf("set bundle: %w", err)
	}
	var out *datastore.Bundle
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		old, err := s.getBundle(ctx, tx, b.TrustDomain, s.dialect.forUpdate)
		if err != nil {
			return err
		}
		out, err = s.putBundle(ctx, tx, old, b)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("set bundle: %w", err)
	}
	return out, nil
}

// AppendBundle adds the X.509 authorities (by DER) and JWT keys (by key ID)
// of b that the stored bundle lacks, creating the bundle if absent. When
// nothing is new the stored bundle is returned unchanged (no sequence bump).
// The stored refresh hint is kept.
func (s *Store) AppendBundle(ctx context.Context, b *datastore.Bundle) (*datastore.Bundle, error) {
	if err := validateBundle(b); err != nil {
		return nil, fmt.Errorf("append bundle: %w", err)
	}
	var out *datastore.Bundle
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		old, err := s.getBundle(ctx, tx, b.TrustDomain, s.dialect.forUpdate)
		if err != nil {
			return err
		}
		var merged *datastore.Bundle
		if old == nil {
			merged = &datastore.Bundle{TrustDomain: b.TrustDomain, RefreshHint: b.RefreshHint}
		} else {
			merged = cloneBundle(old)
		}
		changed := old == nil
		for _, a := range b.X509Authorities {
			if !hasAuthority(merged.X509Authorities, a.ASN1) {
				merged.X509Authorities = append(merged.X509Authorities, datastore.X509Authority{ASN1: bytes.Clone(a.ASN1), Tainted: a.Tainted})
				changed = true
			}
		}
		for _, k := range b.JWTKeys {
			if !hasJWTKey(merged.JWTKeys, k.KeyID) {
				k.PublicKey = bytes.Clone(k.PublicKey)
				merged.JWTKeys = append(merged.JWTKeys, k)
				changed = true
			}
		}
		if !changed {
			out = old
			return nil
		}
		merged.SequenceNumber = 0 // bump by one from the stored number
		out, err = s.putBundle(ctx, tx, old, merged)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("append bundle: %w", err)
	}
	return out, nil
}

func hasAuthority(as []datastore.X509Authority, der []byte) bool {
	for _, a := range as {
		if bytes.Equal(a.ASN1, der) {
			return true
		}
	}
	return false
}

func hasJWTKey(ks []datastore.JWTKey, kid string) bool {
	for _, k := range ks {
		if k.KeyID == kid {
			return true
		}
	}
	return false
}

// DeleteBundle deletes the bundle of the trust domain: ErrNotFound if
// absent, ErrBundleInUse (changing nothing) while entries federate with it.
func (s *Store) DeleteBundle(ctx context.Context, trustDomain string) error {
	if !isText(trustDomain) {
		return fmt.Errorf("delete bundle: bundle %s: %w", clip.Quote(trustDomain), datastore.ErrNotFound)
	}
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		// Lock the bundle first (PostgreSQL): an entry write that checked
		// it holds it FOR SHARE until it commits, so the count below sees
		// every entry that federates with it.
		if _, err := s.getBundle(ctx, tx, trustDomain, s.dialect.forUpdate); err != nil {
			return err
		}
		var uses int
		if err := tx.QueryRowContext(ctx, s.q("SELECT COUNT(*) FROM entry_federates_with WHERE trust_domain = ?"), trustDomain).Scan(&uses); err != nil {
			return fmt.Errorf("count federated entries: %w", err)
		}
		if uses > 0 {
			return fmt.Errorf("bundle %s: %d: %w", clip.Quote(trustDomain), uses, datastore.ErrBundleInUse)
		}
		res, err := tx.ExecContext(ctx, s.q("DELETE FROM bundles WHERE trust_domain = ?"), trustDomain)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("bundle %s: %w", clip.Quote(trustDomain), datastore.ErrNotFound)
		}
		return s.bundleEvent(ctx, tx, trustDomain)
	})
	if err != nil {
		return fmt.Errorf("delete bundle: %w", err)
	}
	return nil
}

// ErrPruneWouldEmptyBundle is returned by PruneBundle instead of removing
// the last X.509 authority of a bundle.
var ErrPruneWouldEmptyBundle = errors.New("pruning would leave the bundle without X.509 authorities")

// PruneBundle drops X.509 authorities whose certificate expired before t
// and JWT keys whose ExpiresAt (when set) is before t. It refuses, changing
// nothing, when that would leave a bundle that had X.509 authorities with
// none. Authorities that do not parse as certificates are kept.
func (s *Store) PruneBundle(ctx context.Context, trustDomain string, before time.Time) (bool, error) {
	if !isText(trustDomain) {
		return false, fmt.Errorf("prune bundle: bundle %s: %w", clip.Quote(trustDomain), datastore.ErrNotFound)
	}
	changed := false
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		changed = false
		old, err := s.getBundle(ctx, tx, trustDomain, s.dialect.forUpdate)
		if err != nil {
			return err
		}
		if old == nil {
			return fmt.Errorf("bundle %s: %w", clip.Quote(trustDomain), datastore.ErrNotFound)
		}
		pruned := cloneBundle(old)
		pruned.X509Authorities = nil
		for _, a := range old.X509Authorities {
			cert, err := x509.ParseCertificate(a.ASN1)
			if err != nil {
				s.log.Warn("Bundle holds an X.509 authority that does not parse; keeping it", "trust_domain", trustDomain, "error", err)
				pruned.X509Authorities = append(pruned.X509Authorities, a)
				continue
			}
			if cert.NotAfter.Before(before) {
				changed = true
				continue
			}
			pruned.X509Authorities = append(pruned.X509Authorities, a)
		}
		if len(old.X509Authorities) > 0 && len(pruned.X509Authorities) == 0 {
			changed = false
			return fmt.Errorf("bundle %q: every X.509 authority expired before %s: %w",
				trustDomain, before.UTC().Format(time.RFC3339), ErrPruneWouldEmptyBundle)
		}
		pruned.JWTKeys = nil
		limit := cutoff(before)
		for _, k := range old.JWTKeys {
			if k.ExpiresAt != 0 && k.ExpiresAt < limit {
				changed = true
				continue
			}
			pruned.JWTKeys = append(pruned.JWTKeys, k)
		}
		if !changed {
			return nil
		}
		pruned.SequenceNumber = 0
		_, err = s.putBundle(ctx, tx, old, pruned)
		if err == nil {
			s.log.Info("Pruned bundle", "trust_domain", trustDomain,
				"x509_authorities_removed", len(old.X509Authorities)-len(pruned.X509Authorities),
				"jwt_keys_removed", len(old.JWTKeys)-len(pruned.JWTKeys))
		}
		return err
	})
	if err != nil {
		return false, fmt.Errorf("prune bundle: %w", err)
	}
	return changed, nil
}

// BundleEvent is datastore.BundleEvent.
type BundleEvent = datastore.BundleEvent

// ListBundleEvents returns bundle events with ID > after, oldest first, at
// most limit (0 = no limit).
func (s *Store) ListBundleEvents(ctx context.Context, after int64, limit int) ([]BundleEvent, error) {
	query := "SELECT id, trust_domain FROM bundle_events WHERE id > ? ORDER BY id"
	args := []any{after}
	if limit > 0 {
		query += " LIMIT ?"
		args = append(args, limit)
	}
	var out []BundleEvent
	err := scanRows(ctx, s.r, s.q(query), args, func(r *sql.Rows) error {
		var ev BundleEvent
		if err := r.Scan(&ev.ID, &ev.TrustDomain); err != nil {
			return err
		}
		out = append(out, ev)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list bundle events: %w", err)
	}
	return out, nil
}

// LastBundleEventID returns the highest bundle event ID (0 if none), pruned
// ones included.
func (s *Store) LastBundleEventID(ctx context.Context) (int64, error) {
	return s.lastEventID(ctx, "bundle_events")
}
