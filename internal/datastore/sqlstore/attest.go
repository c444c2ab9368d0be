package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/sigil-spiffe/sigil/internal/datastore"
)

// AttestNode records an attestation in one write transaction: the join
// token is deleted, the node created or updated, its selectors replaced
// and a node event journaled, or, on any failure (including a crash before
// the commit), none of it (see datastore.NodeAttestation).
func (s *Store) AttestNode(ctx context.Context, a *datastore.NodeAttestation) (*datastore.AttestedNode, error) {
	if a == nil || a.Node == nil || a.Node.SPIFFEID == "" {
		return nil, errors.New("attest node: SPIFFE ID is empty")
	}
	if err := checkNodeText(a.Node); err != nil {
		return nil, fmt.Errorf("attest node: %w", err)
	}
	n := a.Node
	if err := validateSelectors(n.Selectors); err != nil {
		return nil, fmt.Errorf("attest node %q: %w", n.SPIFFEID, err)
	}
	var out *datastore.AttestedNode
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		if a.JoinToken != nil {
			var expires int64
			err := tx.QueryRowContext(ctx, s.q("DELETE FROM join_tokens WHERE token_hash = ? AND expires_at > ? RETURNING expires_at"),
				a.JoinToken[:], a.ValidAt).Scan(&expires)
			if errors.Is(err, sql.ErrNoRows) {
				// Never log or echo the hash: it identifies a secret.
				return fmt.Errorf("join token: %w", datastore.ErrNotFound)
			}
			if err != nil {
				return fmt.Errorf("consume join token: %w", err)
			}
		}
		// Locked until the commit: a ban racing this attestation is
		// either seen here (ErrBanned) or made after it.
		cur, err := s.loadNodes(ctx, tx, " WHERE n.spiffe_id = ?", []any{n.SPIFFEID}, s.dialect.forUpdate, byIDs)
		if err != nil {
			return err
		}
		c := *n
		replaceSels := len(c.Selectors) > 0
		if len(cur) == 0 {
			c.NewCertSerial, c.NewCertNotAfter = "", 0
			c.CreatedAt = s.now()
			if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO attested_nodes (spiffe_id, attestation_type, cert_serial, cert_not_after,
new_cert_serial, new_cert_not_after, can_reattest, created_at) VALUES (?, ?, ?, ?, '', 0, ?, ?)`),
				c.SPIFFEID, c.AttestationType, c.CertSerial, c.CertNotAfter, c.CanReattest, c.CreatedAt); err != nil {
				return fmt.Errorf("insert node: %w", err)
			}
		} else {
			old := cur[0]
			if old.Banned() {
				return fmt.Errorf("node %q: %w", n.SPIFFEID, datastore.ErrBanned)
			}
			if a.MustBeNew {
				return fmt.Errorf("node %q was attested before: %w", n.SPIFFEID, datastore.ErrAlreadyExists)
			}
			c.AttestationType, c.CreatedAt = old.AttestationType, old.CreatedAt
			c.NewCertSerial, c.NewCertNotAfter = "", 0
			if _, err := tx.ExecContext(ctx, s.q(`UPDATE attested_nodes SET cert_serial = ?, cert_not_after = ?, new_cert_serial = '',
new_cert_not_after = 0, can_reattest = ? WHERE spiffe_id = ?`),
				c.CertSerial, c.CertNotAfter, c.CanReattest, c.SPIFFEID); err != nil {
				return fmt.Errorf("update node: %w", err)
			}
			replaceSels = true // re-attestation replaces the node's selectors
		}
		if replaceSels {
			if err := s.replaceNodeSelectors(ctx, tx, c.SPIFFEID, c.Selectors); err != nil {
				return err
			}
		}
		if c.Selectors, err = s.nodeSelectors(ctx, tx, c.SPIFFEID); err != nil {
			return err
		}
		if err := s.nodeEvent(ctx, tx, c.SPIFFEID); err != nil {
			return err
		}
		out = &c
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("attest node: %w", err)
	}
	return out, nil
}
