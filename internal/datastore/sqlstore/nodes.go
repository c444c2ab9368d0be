package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

const nodeColumns = "n.spiffe_id, n.attestation_type, n.cert_serial, n.cert_not_after, n.new_cert_serial, n.new_cert_not_after, n.can_reattest, n.created_at, n.agent_version"

func validateSelectors(sels []selector.Selector) error {
	for _, s := range sels {
		if err := s.Validate(); err != nil {
			return err
		}
	}
	return checkSelectorsText(sels)
}

// checkNodeText checks the text fields of a node write.
func checkNodeText(n *datastore.AttestedNode) error {
	return errors.Join(checkText("node SPIFFE ID", n.SPIFFEID), checkText("node attestation type", n.AttestationType),
		checkText("node serial", n.CertSerial, n.NewCertSerial), checkText("agent version", n.AgentVersion))
}

// CreateNode stores a newly attested node. When n.Selectors is non-empty
// they replace any selectors stored for the node's SPIFFE ID; otherwise
// selectors set earlier with SetNodeSelectors are kept.
func (s *Store) CreateNode(ctx context.Context, n *datastore.AttestedNode) (*datastore.AttestedNode, error) {
	if n == nil || n.SPIFFEID == "" {
		return nil, errors.New("create node: SPIFFE ID is empty")
	}
	if err := checkNodeText(n); err != nil {
		return nil, fmt.Errorf("create node: %w", err)
	}
	if err := validateSelectors(n.Selectors); err != nil {
		return nil, fmt.Errorf("create node %q: %w", n.SPIFFEID, err)
	}
	var out *datastore.AttestedNode
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var one int
		err := tx.QueryRowContext(ctx, s.q("SELECT 1 FROM attested_nodes WHERE spiffe_id = ?"), n.SPIFFEID).Scan(&one)
		switch {
		case err == nil:
			return fmt.Errorf("node %q: %w", n.SPIFFEID, datastore.ErrAlreadyExists)
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
		c := *n
		c.CreatedAt = s.now()
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO attested_nodes (spiffe_id, attestation_type, cert_serial, cert_not_after,
new_cert_serial, new_cert_not_after, can_reattest, created_at, agent_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`),
			c.SPIFFEID, c.AttestationType, c.CertSerial, c.CertNotAfter, c.NewCertSerial, c.NewCertNotAfter, c.CanReattest, c.CreatedAt, c.AgentVersion); err != nil {
			return fmt.Errorf("insert node: %w", err)
		}
		if len(c.Selectors) > 0 {
			if err := s.replaceNodeSelectors(ctx, tx, c.SPIFFEID, c.Selectors); err != nil {
				return err
			}
		}
		sels, err := s.nodeSelectors(ctx, tx, c.SPIFFEID)
		if err != nil {
			return err
		}
		c.Selectors = sels
		if err := s.nodeEvent(ctx, tx, c.SPIFFEID); err != nil {
			return err
		}
		out = &c
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("create node: %w", err)
	}
	return out, nil
}

// GetNode returns the node with its selectors.
func (s *Store) GetNode(ctx context.Context, spiffeID string) (*datastore.AttestedNode, error) {
	if !isText(spiffeID) {
		return nil, fmt.Errorf("node %s: %w", clip.Quote(spiffeID), datastore.ErrNotFound)
	}
	var out []*datastore.AttestedNode
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		var err error
		out, err = s.loadNodes(ctx, tx, " WHERE n.spiffe_id = ?", []any{spiffeID}, "", byIDs)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("get node %q: %w", spiffeID, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("node %q: %w", spiffeID, datastore.ErrNotFound)
	}
	return out[0], nil
}

// loadNodes runs SELECT nodeColumns FROM attested_nodes n <where> ORDER BY
// n.spiffe_id <limit> and loads the selectors of the result (see childRows
// for span).
func (s *Store) loadNodes(ctx context.Context, q queryer, where string, args []any, limit string, span childRows) ([]*datastore.AttestedNode, error) {
	var out []*datastore.AttestedNode
	err := scanRows(ctx, q, s.q("SELECT "+nodeColumns+" FROM attested_nodes n"+where+" ORDER BY n.spiffe_id"+limit), args, func(r *sql.Rows) error {
		n := new(datastore.AttestedNode)
		if err := r.Scan(&n.SPIFFEID, &n.AttestationType, &n.CertSerial, &n.CertNotAfter, &n.NewCertSerial,
			&n.NewCertNotAfter, &n.CanReattest, &n.CreatedAt, &n.AgentVersion); err != nil {
			return err
		}
		out = append(out, n)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("query nodes: %w", err)
	}
	byID := make(map[string]*datastore.AttestedNode, len(out))
	for _, n := range out {
		byID[n.SPIFFEID] = n
	}
	size := maxInArgs
	if span == bySpan {
		size = max(len(out), 1)
	}
	for _, c := range chunks(len(out), size) {
		part := out[c[0]:c[1]]
		ids := make([]string, len(part))
		for i, n := range part {
			ids[i] = n.SPIFFEID
		}
		where, args := childWhere("spiffe_id", ids, span)
		err := scanRows(ctx, q, s.q("SELECT spiffe_id, type, value FROM node_selectors"+where), args, func(r *sql.Rows) error {
			var id string
			var sel selector.Selector
			if err := r.Scan(&id, &sel.Type, &sel.Value); err != nil {
				return err
			}
			if n := byID[id]; n != nil {
				n.Selectors = append(n.Selectors, sel)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("load node selectors: %w", err)
		}
	}
	for _, n := range out {
		selector.Sort(n.Selectors)
	}
	return out, nil
}

func (s *Store) nodeSelectors(ctx context.Context, q queryer, spiffeID string) ([]selector.Selector, error) {
	var sels []selector.Selector
	err := scanRows(ctx, q, s.q("SELECT type, value FROM node_selectors WHERE spiffe_id = ?"), []any{spiffeID}, func(r *sql.Rows) error {
		var sel selector.Selector
		if err := r.Scan(&sel.Type, &sel.Value); err != nil {
			return err
		}
		sels = append(sels, sel)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load node selectors: %w", err)
	}
	selector.Sort(sels)
	return sels, nil
}

func nodeWhere(f datastore.NodeFilter) (*whereBuilder, error) {
	w := &whereBuilder{}
	if f.ByAttestationType != "" {
		w.add("n.attestation_type = ?", f.ByAttestationType)
	}
	if f.ByBanned != nil {
		if *f.ByBanned {
			w.add("(n.cert_serial = '' AND n.new_cert_serial = '')")
		} else {
			w.add("(n.cert_serial <> '' OR n.new_cert_serial <> '')")
		}
	}
	if f.ExpiresBefore != 0 {
		w.add("n.cert_not_after < ?", f.ExpiresBefore)
	}
	if f.ByCanReattest != nil {
		w.add("n.can_reattest = ?", *f.ByCanReattest)
	}
	if len(f.BySelectors) > 0 {
		if err := selectorSet("node_selectors", "spiffe_id", "n.spiffe_id", f.BySelectors).apply(w, f.SelectorMatch); err != nil {
			return nil, fmt.Errorf("selector filter: %w", err)
		}
	}
	return w, nil
}

// ListNodes lists nodes matching f in SPIFFE ID order, with selectors.
func (s *Store) ListNodes(ctx context.Context, f datastore.NodeFilter, p datastore.Page) ([]*datastore.AttestedNode, string, error) {
	after, err := checkPage(p)
	if err != nil {
		return nil, "", fmt.Errorf("list nodes: %w", err)
	}
	w, err := nodeWhere(f)
	if err != nil {
		return nil, "", fmt.Errorf("list nodes: %w", err)
	}
	// An unfiltered page holds every node in its SPIFFE ID span.
	span := byIDs
	if len(w.conds) == 0 {
		span = bySpan
	}
	if after != "" {
		w.add("n.spiffe_id > ?", after)
	}
	limit, largs := limitClause(p)
	var out []*datastore.AttestedNode
	err = s.readTx(ctx, func(tx *sql.Tx) error {
		var err error
		out, err = s.loadNodes(ctx, tx, w.sql(), w.params(largs...), limit, span)
		return err
	})
	if err != nil {
		return nil, "", fmt.Errorf("list nodes: %w", err)
	}
	next := ""
	if p.Size > 0 && len(out) > p.Size {
		out = out[:p.Size]
		next = encodePageToken(out[len(out)-1].SPIFFEID)
	}
	return out, next, nil
}

// CountNodes counts the nodes ListNodes would return for f.
func (s *Store) CountNodes(ctx context.Context, f datastore.NodeFilter) (int, error) {
	w, err := nodeWhere(f)
	if err != nil {
		return 0, fmt.Errorf("count nodes: %w", err)
	}
	var n int
	if err := s.reader(ctx).QueryRowContext(ctx, s.q("SELECT COUNT(*) FROM attested_nodes n"+w.sql()), w.params()...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count nodes: %w", err)
	}
	return n, nil
}

// UpdateNode changes the masked fields (all when mask is nil) of node
// n.SPIFFEID and returns the node with its selectors.
func (s *Store) UpdateNode(ctx context.Context, n *datastore.AttestedNode, mask *datastore.NodeMask) (*datastore.AttestedNode, error) {
	if n == nil || n.SPIFFEID == "" {
		return nil, errors.New("update node: SPIFFE ID is empty")
	}
	if !isText(n.SPIFFEID) {
		return nil, fmt.Errorf("update node %s: %w", clip.Quote(n.SPIFFEID), datastore.ErrNotFound)
	}
	if err := checkNodeText(n); err != nil {
		return nil, fmt.Errorf("update node: %w", err)
	}
	if mask == nil {
		mask = &datastore.NodeMask{CertSerial: true, CertNotAfter: true, NewCertSerial: true, NewCertNotAfter: true, CanReattest: true, AgentVersion: true}
	}
	var out *datastore.AttestedNode
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		// Locked until the commit: a concurrent ban, renewal or
		// re-attestation of the node waits for this one and then sees it.
		cur, err := s.loadNodes(ctx, tx, " WHERE n.spiffe_id = ?", []any{n.SPIFFEID}, s.dialect.forUpdate, byIDs)
		if err != nil {
			return err
		}
		if len(cur) == 0 {
			return fmt.Errorf("node %q: %w", n.SPIFFEID, datastore.ErrNotFound)
		}
		c := cur[0]
		if mask.CertSerial {
			c.CertSerial = n.CertSerial
		}
		if mask.CertNotAfter {
			c.CertNotAfter = n.CertNotAfter
		}
		if mask.NewCertSerial {
			c.NewCertSerial = n.NewCertSerial
		}
		if mask.NewCertNotAfter {
			c.NewCertNotAfter = n.NewCertNotAfter
		}
		if mask.CanReattest {
			c.CanReattest = n.CanReattest
		}
		if mask.AgentVersion {
			c.AgentVersion = n.AgentVersion
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE attested_nodes SET cert_serial = ?, cert_not_after = ?, new_cert_serial = ?,
new_cert_not_after = ?, can_reattest = ?, agent_version = ? WHERE spiffe_id = ?`),
			c.CertSerial, c.CertNotAfter, c.NewCertSerial, c.NewCertNotAfter, c.CanReattest, c.AgentVersion, c.SPIFFEID); err != nil {
			return fmt.Errorf("update node: %w", err)
		}
		if err := s.nodeEvent(ctx, tx, c.SPIFFEID); err != nil {
			return err
		}
		out = c
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("update node: %w", err)
	}
	return out, nil
}

// RenewNode records a renewed SVID as the node's pending one, unless the
// node is banned or gone (see datastore.NodeStore), with a node event.
func (s *Store) RenewNode(ctx context.Context, spiffeID, serial string, notAfter int64) (*datastore.AttestedNode, error) {
	if serial == "" {
		return nil, errors.New("renew node: serial is empty")
	}
	if err := checkText("serial", serial); err != nil {
		return nil, fmt.Errorf("renew node: %w", err)
	}
	if !isText(spiffeID) {
		return nil, fmt.Errorf("renew node %s: %w", clip.Quote(spiffeID), datastore.ErrNotFound)
	}
	var out *datastore.AttestedNode
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		// Locked until the commit: a concurrent ban is seen here or made
		// after this renewal (and then clears its serial too).
		cur, err := s.loadNodes(ctx, tx, " WHERE n.spiffe_id = ?", []any{spiffeID}, s.dialect.forUpdate, byIDs)
		if err != nil {
			return err
		}
		if len(cur) == 0 {
			return fmt.Errorf("node %q: %w", spiffeID, datastore.ErrNotFound)
		}
		if cur[0].Banned() {
			return fmt.Errorf("node %q: %w", spiffeID, datastore.ErrBanned)
		}
		if _, err := tx.ExecContext(ctx, s.q("UPDATE attested_nodes SET new_cert_serial = ?, new_cert_not_after = ? WHERE spiffe_id = ?"),
			serial, notAfter, spiffeID); err != nil {
			return fmt.Errorf("update node: %w", err)
		}
		if err := s.nodeEvent(ctx, tx, spiffeID); err != nil {
			return err
		}
		n := cur[0]
		n.NewCertSerial, n.NewCertNotAfter = serial, notAfter
		out = n
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("renew node: %w", err)
	}
	return out, nil
}

// PromoteNodeSerial swaps NewCertSerial into CertSerial in one conditional
// UPDATE (see datastore.NodeStore).
func (s *Store) PromoteNodeSerial(ctx context.Context, spiffeID, serial string) (*datastore.AttestedNode, error) {
	if serial == "" {
		return nil, errors.New("promote node serial: serial is empty")
	}
	if !isText(spiffeID) || !isText(serial) {
		return nil, fmt.Errorf("promote node serial: node %s has no such pending serial: %w", clip.Quote(spiffeID), datastore.ErrConflict)
	}
	var out *datastore.AttestedNode
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.q(`UPDATE attested_nodes SET cert_serial = new_cert_serial, cert_not_after = new_cert_not_after,
new_cert_serial = '', new_cert_not_after = 0 WHERE spiffe_id = ? AND new_cert_serial = ? AND cert_serial <> ''`), spiffeID, serial)
		if err != nil {
			return fmt.Errorf("update node: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return fmt.Errorf("update node: %w", err)
		} else if n == 0 {
			return fmt.Errorf("node %q has no pending serial %s (banned, deleted or already promoted): %w", spiffeID, serial, datastore.ErrConflict)
		}
		if err := s.nodeEvent(ctx, tx, spiffeID); err != nil {
			return err
		}
		cur, err := s.loadNodes(ctx, tx, " WHERE n.spiffe_id = ?", []any{spiffeID}, "", byIDs)
		if err != nil {
			return err
		}
		out = cur[0]
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("promote node serial: %w", err)
	}
	return out, nil
}

// DeleteNode deletes the node and its selectors and returns what was
// deleted. Deleting a join_token node also deletes its join token's alias
// entries (deleteJoinTokenAliases), in the same transaction.
func (s *Store) DeleteNode(ctx context.Context, spiffeID string) (*datastore.AttestedNode, error) {
	if !isText(spiffeID) {
		return nil, fmt.Errorf("delete node: node %s: %w", clip.Quote(spiffeID), datastore.ErrNotFound)
	}
	var (
		out     *datastore.AttestedNode
		aliases []string
	)
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		aliases = nil
		cur, err := s.loadNodes(ctx, tx, " WHERE n.spiffe_id = ?", []any{spiffeID}, s.dialect.forUpdate, byIDs)
		if err != nil {
			return err
		}
		if len(cur) == 0 {
			return fmt.Errorf("node %q: %w", spiffeID, datastore.ErrNotFound)
		}
		if _, err := tx.ExecContext(ctx, s.q("DELETE FROM attested_nodes WHERE spiffe_id = ?"), spiffeID); err != nil {
			return fmt.Errorf("delete node: %w", err)
		}
		if _, err := tx.ExecContext(ctx, s.q("DELETE FROM node_selectors WHERE spiffe_id = ?"), spiffeID); err != nil {
			return fmt.Errorf("delete node selectors: %w", err)
		}
		if err := s.nodeEvent(ctx, tx, spiffeID); err != nil {
			return err
		}
		if cur[0].AttestationType == joinTokenAttestation {
			if aliases, err = s.deleteJoinTokenAliases(ctx, tx, spiffeID); err != nil {
				return err
			}
		}
		out = cur[0]
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("delete node: %w", err)
	}
	if len(aliases) > 0 {
		s.log.InfoContext(ctx, "Deleted the join token alias entries of a deleted agent", "spiffe_id", spiffeID, "entry_ids", aliases)
	}
	return out, nil
}

// joinTokenAttestation is the attestation type of join-token agents.
const joinTokenAttestation = "join_token"

// deleteJoinTokenAliases deletes, in tx, the alias entries a join token
// created for the agent spiffeID (CreateJoinToken with an agent ID): the
// entries whose parent is spiffeID and whose only selector is
// spiffe_id:<spiffeID>. A join token is used once, so nothing can be
// authorized through them once that agent is gone, and SPIRE (since
// 1.15.2) deletes them with the agent too. Other entries parented to the
// agent are the operator's and stay. It returns the deleted entry IDs.
func (s *Store) deleteJoinTokenAliases(ctx context.Context, tx *sql.Tx, spiffeID string) ([]string, error) {
	var ids []string
	err := scanRows(ctx, tx, s.q(`SELECT e.id FROM entries e
		WHERE e.parent_id = ?
		AND (SELECT COUNT(*) FROM entry_selectors s WHERE s.entry_id = e.id) = 1
		AND EXISTS (SELECT 1 FROM entry_selectors s WHERE s.entry_id = e.id AND s.type = 'spiffe_id' AND s.value = ?)
		ORDER BY e.id`), []any{spiffeID, spiffeID}, func(r *sql.Rows) error {
		var id string
		if err := r.Scan(&id); err != nil {
			return err
		}
		ids = append(ids, id)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("find join token alias entries: %w", err)
	}
	for _, id := range ids {
		if _, err := tx.ExecContext(ctx, s.q("DELETE FROM entries WHERE id = ?"), id); err != nil {
			return nil, fmt.Errorf("delete join token alias entry %s: %w", id, err)
		}
		if err := s.entryEvent(ctx, tx, id, datastore.EntryDeleted); err != nil {
			return nil, err
		}
	}
	return ids, nil
}

// SetNodeSelectors replaces the selectors of the node with this SPIFFE ID.
// Like SPIRE, it does not require the node to exist yet.
func (s *Store) SetNodeSelectors(ctx context.Context, spiffeID string, sels []selector.Selector) error {
	if spiffeID == "" {
		return errors.New("set node selectors: SPIFFE ID is empty")
	}
	if err := checkText("node SPIFFE ID", spiffeID); err != nil {
		return fmt.Errorf("set node selectors: %w", err)
	}
	if err := validateSelectors(sels); err != nil {
		return fmt.Errorf("set node selectors of %q: %w", spiffeID, err)
	}
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		if err := s.replaceNodeSelectors(ctx, tx, spiffeID, sels); err != nil {
			return err
		}
		return s.nodeEvent(ctx, tx, spiffeID)
	})
	if err != nil {
		return fmt.Errorf("set node selectors of %q: %w", spiffeID, err)
	}
	return nil
}

func (s *Store) replaceNodeSelectors(ctx context.Context, tx *sql.Tx, spiffeID string, sels []selector.Selector) error {
	// PostgreSQL: the node may not exist yet (no row to lock), so two
	// replacements of one node's selectors take turns on an advisory lock;
	// without it both could delete the old set and the result be the union
	// of the two new ones.
	if err := s.advisoryLock(ctx, tx, "node_selectors", spiffeID); err != nil {
		return fmt.Errorf("replace node selectors: %w", err)
	}
	if _, err := tx.ExecContext(ctx, s.q("DELETE FROM node_selectors WHERE spiffe_id = ?"), spiffeID); err != nil {
		return fmt.Errorf("replace node selectors: %w", err)
	}
	sels = selector.Dedupe(sels)
	if len(sels) == 0 {
		return nil
	}
	st, err := tx.PrepareContext(ctx, s.q("INSERT INTO node_selectors (spiffe_id, type, value) VALUES (?, ?, ?)"))
	if err != nil {
		return fmt.Errorf("replace node selectors: %w", err)
	}
	defer st.Close()
	for _, sel := range sels {
		if _, err := st.ExecContext(ctx, spiffeID, sel.Type, sel.Value); err != nil {
			return fmt.Errorf("replace node selectors: %w", err)
		}
	}
	return nil
}

func (s *Store) nodeEvent(ctx context.Context, tx *sql.Tx, spiffeID string) error {
	s.journaled(tx, datastore.ChangeNodes)
	if _, err := tx.ExecContext(ctx, s.q("INSERT INTO node_events (spiffe_id, created_at) VALUES (?, ?)"), spiffeID, s.now()); err != nil {
		return fmt.Errorf("record node event: %w", err)
	}
	return nil
}

// ListNodeEvents returns node events with ID > after, oldest first, at most
// limit (0 = no limit).
func (s *Store) ListNodeEvents(ctx context.Context, after int64, limit int) ([]datastore.NodeEvent, error) {
	query := "SELECT id, spiffe_id FROM node_events WHERE id > ? ORDER BY id"
	args := []any{after}
	if limit > 0 {
		query += " LIMIT ?"
		args = append(args, limit)
	}
	var out []datastore.NodeEvent
	err := scanRows(ctx, s.r, s.q(query), args, func(r *sql.Rows) error {
		var ev datastore.NodeEvent
		if err := r.Scan(&ev.ID, &ev.SPIFFEID); err != nil {
			return err
		}
		out = append(out, ev)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list node events: %w", err)
	}
	return out, nil
}

// LastNodeEventID returns the highest node event ID (0 if none), pruned
// ones included.
func (s *Store) LastNodeEventID(ctx context.Context) (int64, error) {
	return s.lastEventID(ctx, "node_events")
}
