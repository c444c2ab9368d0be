package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/datastore"
)

const relationshipColumns = "trust_domain, bundle_endpoint_url, profile, endpoint_spiffe_id, created_at, updated_at"

func scanRelationship(sc interface{ Scan(...any) error }) (*datastore.FederationRelationship, error) {
	var fr datastore.FederationRelationship
	if err := sc.Scan(&fr.TrustDomain, &fr.BundleEndpointURL, &fr.Profile, &fr.EndpointSPIFFEID, &fr.CreatedAt, &fr.UpdatedAt); err != nil {
		return nil, err
	}
	return &fr, nil
}

// validateRelationship checks what the store relies on; the API edge
// validates URLs and SPIFFE IDs.
func validateRelationship(fr *datastore.FederationRelationship) error {
	if fr == nil {
		return errors.New("federation relationship is nil")
	}
	if fr.TrustDomain == "" {
		return errors.New("trust domain is empty")
	}
	if err := errors.Join(checkText("trust domain", fr.TrustDomain), checkText("bundle endpoint URL", fr.BundleEndpointURL),
		checkText("bundle endpoint profile", fr.Profile), checkText("endpoint SPIFFE ID", fr.EndpointSPIFFEID)); err != nil {
		return err
	}
	if fr.BundleEndpointURL == "" {
		return fmt.Errorf("relationship %s: bundle endpoint URL is empty", clip.Quote(fr.TrustDomain))
	}
	switch fr.Profile {
	case datastore.ProfileHTTPSWeb:
		if fr.EndpointSPIFFEID != "" {
			return fmt.Errorf("relationship %s: the https_web profile has no endpoint SPIFFE ID", clip.Quote(fr.TrustDomain))
		}
	case datastore.ProfileHTTPSSPIFFE:
		if fr.EndpointSPIFFEID == "" {
			return fmt.Errorf("relationship %s: the https_spiffe profile needs an endpoint SPIFFE ID", clip.Quote(fr.TrustDomain))
		}
	default:
		return fmt.Errorf("relationship %s: unknown bundle endpoint profile %s", clip.Quote(fr.TrustDomain), clip.Quote(fr.Profile))
	}
	return nil
}

// checkRelationshipBundle checks a bundle given with a relationship: it is
// the relationship's trust domain's.
func checkRelationshipBundle(td string, b *datastore.Bundle) error {
	if b == nil {
		return nil
	}
	if err := validateBundle(b); err != nil {
		return err
	}
	if b.TrustDomain != td {
		return fmt.Errorf("bundle of %s given with the relationship of %s", clip.Quote(b.TrustDomain), clip.Quote(td))
	}
	return nil
}

// getRelationship reads a relationship; nil when absent. lock is "" or the
// dialect's forUpdate (a write transaction about to change it).
func (s *Store) getRelationship(ctx context.Context, q queryer, td, lock string) (*datastore.FederationRelationship, error) {
	fr, err := scanRelationship(q.QueryRowContext(ctx, s.q("SELECT "+relationshipColumns+" FROM federation_relationships WHERE trust_domain = ?"+lock), td))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read federation relationship %s: %w", clip.Quote(td), err)
	}
	return fr, nil
}

// setRelationshipBundle sets b (when not nil) inside tx.
func (s *Store) setRelationshipBundle(ctx context.Context, tx *sql.Tx, b *datastore.Bundle) error {
	if b == nil {
		return nil
	}
	old, err := s.getBundle(ctx, tx, b.TrustDomain, s.dialect.forUpdate)
	if err != nil {
		return err
	}
	_, err = s.putBundle(ctx, tx, old, b)
	return err
}

// CreateFederationRelationship stores a new relationship and, when bundle
// is not nil, sets its trust domain's bundle, in one transaction.
func (s *Store) CreateFederationRelationship(ctx context.Context, fr *datastore.FederationRelationship, bundle *datastore.Bundle) (*datastore.FederationRelationship, error) {
	if err := validateRelationship(fr); err != nil {
		return nil, fmt.Errorf("create federation relationship: %w", err)
	}
	if err := checkRelationshipBundle(fr.TrustDomain, bundle); err != nil {
		return nil, fmt.Errorf("create federation relationship: %w", err)
	}
	out := *fr
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		old, err := s.getRelationship(ctx, tx, fr.TrustDomain, s.dialect.forUpdate)
		if err != nil {
			return err
		}
		if old != nil {
			return fmt.Errorf("relationship %s: %w", clip.Quote(fr.TrustDomain), datastore.ErrAlreadyExists)
		}
		if err := s.setRelationshipBundle(ctx, tx, bundle); err != nil {
			return err
		}
		out.CreatedAt, out.UpdatedAt = s.now(), s.now()
		_, err = tx.ExecContext(ctx, s.q("INSERT INTO federation_relationships ("+relationshipColumns+") VALUES (?, ?, ?, ?, ?, ?)"),
			out.TrustDomain, out.BundleEndpointURL, out.Profile, out.EndpointSPIFFEID, out.CreatedAt, out.UpdatedAt)
		if err != nil {
			return fmt.Errorf("insert federation relationship: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("create federation relationship: %w", err)
	}
	return &out, nil
}

// GetFederationRelationship returns the relationship with the trust domain
// (ErrNotFound).
func (s *Store) GetFederationRelationship(ctx context.Context, trustDomain string) (*datastore.FederationRelationship, error) {
	if !isText(trustDomain) {
		return nil, fmt.Errorf("federation relationship %s: %w", clip.Quote(trustDomain), datastore.ErrNotFound)
	}
	fr, err := s.getRelationship(ctx, s.r, trustDomain, "")
	if err != nil {
		return nil, fmt.Errorf("get federation relationship: %w", err)
	}
	if fr == nil {
		return nil, fmt.Errorf("federation relationship %s: %w", clip.Quote(trustDomain), datastore.ErrNotFound)
	}
	return fr, nil
}

// ListFederationRelationships lists relationships in trust domain order.
func (s *Store) ListFederationRelationships(ctx context.Context, p datastore.Page) ([]*datastore.FederationRelationship, string, error) {
	after, err := checkPage(p)
	if err != nil {
		return nil, "", fmt.Errorf("list federation relationships: %w", err)
	}
	w := &whereBuilder{}
	if after != "" {
		w.add("trust_domain > ?", after)
	}
	limit, largs := limitClause(p)
	var out []*datastore.FederationRelationship
	err = scanRows(ctx, s.r, s.q("SELECT "+relationshipColumns+" FROM federation_relationships"+w.sql()+" ORDER BY trust_domain"+limit),
		w.params(largs...), func(r *sql.Rows) error {
			fr, err := scanRelationship(r)
			if err != nil {
				return err
			}
			out = append(out, fr)
			return nil
		})
	if err != nil {
		return nil, "", fmt.Errorf("list federation relationships: %w", err)
	}
	next := ""
	if p.Size > 0 && len(out) > p.Size {
		out = out[:p.Size]
		next = encodePageToken(out[len(out)-1].TrustDomain)
	}
	return out, next, nil
}

// UpdateFederationRelationship changes the masked fields (nil mask: all)
// of the relationship of fr.TrustDomain and, when bundle is not nil, sets
// its bundle, in one transaction.
func (s *Store) UpdateFederationRelationship(ctx context.Context, fr *datastore.FederationRelationship, mask *datastore.FederationRelationshipMask, bundle *datastore.Bundle) (*datastore.FederationRelationship, error) {
	if fr == nil || fr.TrustDomain == "" {
		return nil, errors.New("update federation relationship: trust domain is empty")
	}
	if mask == nil {
		mask = &datastore.FederationRelationshipMask{BundleEndpointURL: true, Profile: true}
	}
	if err := checkRelationshipBundle(fr.TrustDomain, bundle); err != nil {
		return nil, fmt.Errorf("update federation relationship: %w", err)
	}
	var out *datastore.FederationRelationship
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		old, err := s.getRelationship(ctx, tx, fr.TrustDomain, s.dialect.forUpdate)
		if err != nil {
			return err
		}
		if old == nil {
			return fmt.Errorf("relationship %s: %w", clip.Quote(fr.TrustDomain), datastore.ErrNotFound)
		}
		next := *old
		if mask.BundleEndpointURL {
			next.BundleEndpointURL = fr.BundleEndpointURL
		}
		if mask.Profile {
			next.Profile, next.EndpointSPIFFEID = fr.Profile, fr.EndpointSPIFFEID
		}
		if err := validateRelationship(&next); err != nil {
			return err
		}
		if err := s.setRelationshipBundle(ctx, tx, bundle); err != nil {
			return err
		}
		next.UpdatedAt = s.now()
		_, err = tx.ExecContext(ctx, s.q("UPDATE federation_relationships SET bundle_endpoint_url = ?, profile = ?, endpoint_spiffe_id = ?, updated_at = ? WHERE trust_domain = ?"),
			next.BundleEndpointURL, next.Profile, next.EndpointSPIFFEID, next.UpdatedAt, next.TrustDomain)
		if err != nil {
			return fmt.Errorf("write federation relationship: %w", err)
		}
		out = &next
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("update federation relationship: %w", err)
	}
	return out, nil
}

// DeleteFederationRelationship deletes the relationship (ErrNotFound); the
// bundle of the trust domain stays.
func (s *Store) DeleteFederationRelationship(ctx context.Context, trustDomain string) error {
	if !isText(trustDomain) {
		return fmt.Errorf("delete federation relationship: federation relationship %s: %w", clip.Quote(trustDomain), datastore.ErrNotFound)
	}
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.q("DELETE FROM federation_relationships WHERE trust_domain = ?"), trustDomain)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("federation relationship %s: %w", clip.Quote(trustDomain), datastore.ErrNotFound)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete federation relationship: %w", err)
	}
	return nil
}

// SetBundleRefreshed records that the trust domain's bundle was fetched
// from its endpoint at t.
func (s *Store) SetBundleRefreshed(ctx context.Context, trustDomain string, t time.Time) error {
	if trustDomain == "" {
		return errors.New("set bundle refreshed: trust domain is empty")
	}
	if err := checkText("trust domain", trustDomain); err != nil {
		return fmt.Errorf("set bundle refreshed: %w", err)
	}
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, s.q("INSERT INTO bundle_refreshes (trust_domain, refreshed_at) VALUES (?, ?) ON CONFLICT (trust_domain) DO UPDATE SET refreshed_at = excluded.refreshed_at"),
			trustDomain, t.Unix())
		return err
	})
	if err != nil {
		return fmt.Errorf("set bundle refreshed: %w", err)
	}
	return nil
}

// BundleRefreshes returns when each trust domain's bundle was last fetched
// from its endpoint.
func (s *Store) BundleRefreshes(ctx context.Context) (map[string]time.Time, error) {
	out := map[string]time.Time{}
	err := scanRows(ctx, s.r, "SELECT trust_domain, refreshed_at FROM bundle_refreshes", nil, func(r *sql.Rows) error {
		var td string
		var at int64
		if err := r.Scan(&td, &at); err != nil {
			return err
		}
		out[td] = time.Unix(at, 0)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list bundle refreshes: %w", err)
	}
	return out, nil
}
