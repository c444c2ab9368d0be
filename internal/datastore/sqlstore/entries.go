package sqlstore

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

const entryColumns = "e.id, e.spiffe_id, e.parent_id, e.x509_svid_ttl, e.jwt_svid_ttl, e.admin, e.downstream, e.hint, e.store_svid, e.expires_at, e.created_at, e.revision"

// maxIDLen bounds caller-chosen entry IDs.
const maxIDLen = 255

// normalizeEntry validates e and returns a copy with selectors sorted and
// de-duplicated and trust domains sorted and de-duplicated.
func normalizeEntry(e *datastore.Entry) (*datastore.Entry, error) {
	if e == nil {
		return nil, errors.New("entry is nil")
	}
	if e.SPIFFEID == "" {
		return nil, errors.New("entry SPIFFE ID is empty")
	}
	if e.ParentID == "" {
		return nil, errors.New("entry parent ID is empty")
	}
	if len(e.ID) > maxIDLen {
		return nil, fmt.Errorf("entry ID is longer than %d bytes", maxIDLen)
	}
	if len(e.Selectors) == 0 {
		return nil, errors.New("entry has no selectors")
	}
	for _, s := range e.Selectors {
		if err := s.Validate(); err != nil {
			return nil, fmt.Errorf("entry selector: %w", err)
		}
	}
	if err := errors.Join(checkText("entry ID", e.ID), checkText("entry SPIFFE ID", e.SPIFFEID), checkText("entry parent ID", e.ParentID),
		checkText("entry hint", e.Hint), checkText("an entry DNS name", e.DNSNames...), checkText("a trust domain the entry federates with", e.FederatesWith...),
		checkSelectorsText(e.Selectors)); err != nil {
		return nil, err
	}
	for _, td := range e.FederatesWith {
		if td == "" {
			return nil, errors.New("entry federates with an empty trust domain")
		}
	}
	for _, dns := range e.DNSNames {
		if dns == "" {
			return nil, errors.New("entry has an empty DNS name")
		}
	}
	c := *e
	c.Selectors = selector.Dedupe(e.Selectors)
	c.DNSNames = append([]string(nil), e.DNSNames...)
	c.FederatesWith = dedupeStrings(e.FederatesWith)
	if len(c.FederatesWith) == 0 {
		c.FederatesWith = nil
	}
	if len(c.DNSNames) == 0 {
		c.DNSNames = nil
	}
	return &c, nil
}

// dupKey encodes SPIRE's duplicate rule (SPIFFE ID, parent ID, selector
// set) as a fixed-size key. Fields are length-prefixed, so no two distinct
// tuples share an encoding. sels must be sorted and de-duplicated.
func dupKey(spiffeID, parentID string, sels []selector.Selector) string {
	h := sha256.New()
	var buf [binary.MaxVarintLen64]byte
	write := func(s string) {
		n := binary.PutUvarint(buf[:], uint64(len(s)))
		h.Write(buf[:n])
		h.Write([]byte(s))
	}
	write(spiffeID)
	write(parentID)
	for _, s := range sels {
		write(s.Type)
		write(s.Value)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// newEntryID returns a UUIDv7: time-ordered, so new entries (and their
// child rows, keyed by entry ID) append to the b-trees instead of dirtying
// random pages.
func newEntryID() string {
	id, err := uuid.NewV7()
	if err != nil {
		return uuid.NewString()
	}
	return id.String()
}

type preparedEntry struct {
	e   *datastore.Entry
	key string
}

// CreateEntries creates the entries in one transaction. Invalid entries and
// duplicates (of stored entries or of earlier entries of the same batch)
// get a per-entry error and do not fail the others.
func (s *Store) CreateEntries(ctx context.Context, entries []*datastore.Entry) ([]datastore.EntryResult, error) {
	results := make([]datastore.EntryResult, len(entries))
	prepared := make([]*preparedEntry, len(entries))
	now := s.now()
	for i, in := range entries {
		e, err := normalizeEntry(in)
		if err != nil {
			results[i].Err = fmt.Errorf("entry %d: %w", i, err)
			continue
		}
		if e.ID == "" {
			e.ID = newEntryID()
		}
		e.CreatedAt = now
		e.RevisionNumber = 0
		prepared[i] = &preparedEntry{e: e, key: dupKey(e.SPIFFEID, e.ParentID, e.Selectors)}
	}
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		for i, p := range prepared {
			if p != nil {
				results[i] = datastore.EntryResult{} // a retried transaction starts over
			}
		}
		// Which IDs and duplicate keys exist already: a few IN queries for
		// the whole batch instead of lookups per entry.
		var ids, spiffeIDs []string
		for _, p := range prepared {
			if p != nil {
				ids = append(ids, p.e.ID)
				spiffeIDs = append(spiffeIDs, p.e.SPIFFEID)
			}
		}
		spiffeIDs = dedupeStrings(spiffeIDs)
		takenIDs, err := s.existing(ctx, tx, "SELECT id FROM entries WHERE id IN (%s)", ids)
		if err != nil {
			return err
		}
		// dup_key is indexed after spiffe_id: fetch the keys of the stored
		// entries with the batch's SPIFFE IDs.
		takenKeys, err := s.existing(ctx, tx, "SELECT dup_key FROM entries WHERE spiffe_id IN (%s)", spiffeIDs)
		if err != nil {
			return err
		}
		var feds []string
		for _, p := range prepared {
			if p != nil {
				feds = append(feds, p.e.FederatesWith...)
			}
		}
		// Locked until the commit (PostgreSQL): a racing DeleteBundle
		// waits, then sees these entries.
		bundles, err := s.existing(ctx, tx, "SELECT trust_domain FROM bundles WHERE trust_domain IN (%s)"+s.dialect.forShare, dedupeStrings(feds))
		if err != nil {
			return err
		}
		// First, in input order, what conflicts with a stored entry or an
		// earlier one of the batch (the first of two duplicates wins).
		var winners []int
		for i, p := range prepared {
			if p == nil {
				continue
			}
			if takenIDs[p.e.ID] {
				results[i].Err = fmt.Errorf("entry %s: ID in use: %w", clip.Quote(p.e.ID), datastore.ErrAlreadyExists)
				continue
			}
			if takenKeys[p.key] {
				results[i].Err = fmt.Errorf("entry with SPIFFE ID %s, parent %s and these selectors: %w", clip.Quote(p.e.SPIFFEID), clip.Quote(p.e.ParentID), datastore.ErrAlreadyExists)
				continue
			}
			if err := missingBundle(p.e.FederatesWith, bundles); err != nil {
				results[i].Err = err
				continue
			}
			takenIDs[p.e.ID] = true
			takenKeys[p.key] = true
			winners = append(winners, i)
		}
		// Then insert in the order of the duplicate key: concurrent
		// batches naming the same entries (on PostgreSQL) wait for each
		// other in one order instead of deadlocking.
		slices.SortStableFunc(winners, func(a, b int) int { return strings.Compare(prepared[a].key, prepared[b].key) })
		batch := make([]*preparedEntry, len(winners))
		for j, i := range winners {
			batch[j] = prepared[i]
		}
		inserted, err := s.insertEntries(ctx, tx, batch)
		if err != nil {
			return err
		}
		for _, i := range winners {
			p := prepared[i]
			if !inserted[p.e.ID] {
				// Another writer committed the ID or the duplicate
				// meanwhile (PostgreSQL; SQLite writers are serialized).
				results[i].Err = s.conflictError(ctx, tx, p)
				continue
			}
			results[i].Entry = p.e
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("create entries: %w", err)
	}
	return results, nil
}

// missingBundle is the error for the first of tds (trust domains an entry
// federates with) that has no bundle in bundles, or nil.
func missingBundle(tds []string, bundles map[string]bool) error {
	for _, td := range tds {
		if !bundles[td] {
			return &datastore.NoFederatedBundleError{TrustDomain: td}
		}
	}
	return nil
}

// existing returns which of vals the query (with one %s for the IN list)
// finds.
func (s *Store) existing(ctx context.Context, q queryer, query string, vals []string) (map[string]bool, error) {
	out := make(map[string]bool)
	for _, c := range chunks(len(vals), maxInArgs) {
		part := vals[c[0]:c[1]]
		args := make([]any, len(part))
		for i, v := range part {
			args[i] = v
		}
		rows, err := q.QueryContext(ctx, s.q(fmt.Sprintf(query, placeholders(len(part)))), args...)
		if err != nil {
			return nil, fmt.Errorf("look up existing rows: %w", err)
		}
		for rows.Next() {
			var v string
			if err := rows.Scan(&v); err != nil {
				rows.Close()
				return nil, fmt.Errorf("look up existing rows: %w", err)
			}
			out[v] = true
		}
		if err := rows.Close(); err != nil {
			return nil, err
		}
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("look up existing rows: %w", err)
		}
	}
	return out, nil
}

// insertEntries writes the entries, in order, with ON CONFLICT DO NOTHING
// (an entry whose ID or duplicate key a concurrent writer took is skipped,
// not an error), then the child rows and creation event of those written
// (on PostgreSQL a few multi-row statements for the whole batch, not
// several per entry: see insertRows). It returns the IDs written.
func (s *Store) insertEntries(ctx context.Context, tx *sql.Tx, ps []*preparedEntry) (map[string]bool, error) {
	inserted := make(map[string]bool, len(ps))
	rows := make([][]any, len(ps))
	for i, p := range ps {
		e := p.e
		rows[i] = []any{e.ID, e.SPIFFEID, e.ParentID, p.key, e.X509SVIDTTL, e.JWTSVIDTTL,
			e.Admin, e.Downstream, e.Hint, e.StoreSVID, e.ExpiresAt, e.CreatedAt, e.RevisionNumber}
	}
	written, err := s.insertRows(ctx, tx, "entries (id, spiffe_id, parent_id, dup_key, x509_svid_ttl, jwt_svid_ttl, admin, downstream, hint, store_svid, expires_at, created_at, revision)",
		rows, true)
	if err != nil {
		return nil, fmt.Errorf("insert entries: %w", err)
	}
	for i, ok := range written {
		if ok {
			inserted[ps[i].e.ID] = true
		}
	}
	var sels, dns, feds, events [][]any
	now := s.now()
	for _, p := range ps {
		e := p.e
		if !inserted[e.ID] {
			continue
		}
		for _, sel := range e.Selectors {
			sels = append(sels, []any{e.ID, sel.Type, sel.Value})
		}
		for i, name := range e.DNSNames {
			dns = append(dns, []any{e.ID, i, name})
		}
		for _, td := range e.FederatesWith {
			feds = append(feds, []any{e.ID, td})
		}
		events = append(events, []any{e.ID, int(datastore.EntryCreated), now})
	}
	if len(events) > 0 {
		s.journaled(tx, datastore.ChangeEntries)
	}
	for _, t := range []struct {
		table string
		rows  [][]any
	}{
		{"entry_selectors (entry_id, type, value)", sels},
		{"entry_dns_names (entry_id, pos, name)", dns},
		{"entry_federates_with (entry_id, trust_domain)", feds},
		{"entry_events (entry_id, kind, created_at)", events},
	} {
		if _, err := s.insertRows(ctx, tx, t.table, t.rows, false); err != nil {
			return nil, fmt.Errorf("insert into %s: %w", t.table, err)
		}
	}
	return inserted, nil
}

// maxInsertParams bounds the parameters of one multi-row INSERT (SQLite
// allows 32766, PostgreSQL 65535).
const maxInsertParams = 4000

// insertRows inserts rows (all of one width) with INSERT INTO <into>
// VALUES .... With skipConflicts, a row that would violate a unique
// constraint is skipped (ON CONFLICT DO NOTHING) and written[i] reports
// whether row i was; the first column of into must then be a text key
// unique within rows. PostgreSQL gets as few multi-row statements as
// maxInsertParams allows (each statement is a round trip to the server);
// SQLite, in process, one prepared single-row statement executed per row
// (cheaper there than parsing a long statement per batch).
func (s *Store) insertRows(ctx context.Context, tx *sql.Tx, into string, rows [][]any, skipConflicts bool) (written []bool, err error) {
	if len(rows) == 0 {
		return nil, nil
	}
	if skipConflicts {
		written = make([]bool, len(rows))
	}
	width := len(rows[0])
	tuple := "(" + placeholders(width) + ")"
	suffix := ""
	if skipConflicts {
		suffix = " ON CONFLICT DO NOTHING"
	}
	if !s.dialect.multiRowInsert {
		st, err := tx.PrepareContext(ctx, s.q("INSERT INTO "+into+" VALUES "+tuple+suffix))
		if err != nil {
			return nil, err
		}
		defer st.Close()
		for i, r := range rows {
			res, err := st.ExecContext(ctx, r...)
			if err != nil {
				return nil, err
			}
			if skipConflicts {
				n, err := res.RowsAffected()
				if err != nil {
					return nil, err
				}
				written[i] = n == 1
			}
		}
		return written, nil
	}
	var got map[string]bool
	if skipConflicts {
		key, _, _ := strings.Cut(into[strings.IndexByte(into, '(')+1:], ",")
		suffix += " RETURNING " + strings.TrimSpace(key)
		got = make(map[string]bool, len(rows))
	}
	for _, c := range chunks(len(rows), max(1, maxInsertParams/width)) {
		part := rows[c[0]:c[1]]
		var b strings.Builder
		b.Grow(len(into) + 20 + len(part)*(len(tuple)+2) + len(suffix))
		b.WriteString("INSERT INTO ")
		b.WriteString(into)
		b.WriteString(" VALUES ")
		args := make([]any, 0, len(part)*width)
		for i, r := range part {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(tuple)
			args = append(args, r...)
		}
		b.WriteString(suffix)
		q := s.q(b.String())
		if !skipConflicts {
			if _, err := tx.ExecContext(ctx, q, args...); err != nil {
				return nil, err
			}
			continue
		}
		err := scanRows(ctx, tx, q, args, func(r *sql.Rows) error {
			var k string
			if err := r.Scan(&k); err != nil {
				return err
			}
			got[k] = true
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	for i, r := range rows {
		if skipConflicts {
			k, _ := r[0].(string)
			written[i] = got[k]
		}
	}
	return written, nil
}

// conflictError is the ErrAlreadyExists of an entry whose insert found its
// ID or duplicate key taken.
func (s *Store) conflictError(ctx context.Context, tx *sql.Tx, p *preparedEntry) error {
	var one int
	err := tx.QueryRowContext(ctx, s.q("SELECT 1 FROM entries WHERE id = ?"), p.e.ID).Scan(&one)
	if err == nil {
		return fmt.Errorf("entry %s: ID in use: %w", clip.Quote(p.e.ID), datastore.ErrAlreadyExists)
	}
	return fmt.Errorf("entry with SPIFFE ID %s, parent %s and these selectors: %w", clip.Quote(p.e.SPIFFEID), clip.Quote(p.e.ParentID), datastore.ErrAlreadyExists)
}

// GetEntry returns the entry with this ID.
func (s *Store) GetEntry(ctx context.Context, id string) (*datastore.Entry, error) {
	if !isText(id) {
		return nil, fmt.Errorf("entry %s: %w", clip.Quote(id), datastore.ErrNotFound)
	}
	var out []*datastore.Entry
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		var err error
		out, err = s.loadEntries(ctx, tx, " WHERE e.id = ?", []any{id}, "", byIDs)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("get entry %s: %w", clip.Quote(id), err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("entry %s: %w", clip.Quote(id), datastore.ErrNotFound)
	}
	return out[0], nil
}

// GetEntries reads the entries with these IDs in one read transaction, in
// chunks that keep the statement's parameter count bounded. Missing IDs are
// absent from the result.
func (s *Store) GetEntries(ctx context.Context, ids []string) (map[string]*datastore.Entry, error) {
	out := make(map[string]*datastore.Entry, len(ids))
	ids = slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return !isText(id) }) // no such entries
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		for start := 0; start < len(ids); start += maxInArgs {
			chunk := ids[start:min(start+maxInArgs, len(ids))]
			args := make([]any, len(chunk))
			for i, id := range chunk {
				args[i] = id
			}
			es, err := s.loadEntries(ctx, tx, " WHERE e.id IN ("+placeholders(len(chunk))+")", args, "", byIDs)
			if err != nil {
				return err
			}
			for _, e := range es {
				out[e.ID] = e
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("get %d entries: %w", len(ids), err)
	}
	return out, nil
}

// loadEntries runs SELECT entryColumns FROM entries e <where> ORDER BY e.id
// <limit> and loads the child rows of the result (see childRows for
// span).
func (s *Store) loadEntries(ctx context.Context, q queryer, where string, args []any, limit string, span childRows) ([]*datastore.Entry, error) {
	rows, err := q.QueryContext(ctx, s.q("SELECT "+entryColumns+" FROM entries e"+where+" ORDER BY e.id"+limit), args...)
	if err != nil {
		return nil, fmt.Errorf("query entries: %w", err)
	}
	var out []*datastore.Entry
	for rows.Next() {
		e := new(datastore.Entry)
		if err := rows.Scan(&e.ID, &e.SPIFFEID, &e.ParentID, &e.X509SVIDTTL, &e.JWTSVIDTTL, &e.Admin, &e.Downstream,
			&e.Hint, &e.StoreSVID, &e.ExpiresAt, &e.CreatedAt, &e.RevisionNumber); err != nil {
			rows.Close()
			return nil, fmt.Errorf("scan entry: %w", err)
		}
		out = append(out, e)
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query entries: %w", err)
	}
	if err := s.loadEntryChildren(ctx, q, out, span); err != nil {
		return nil, err
	}
	return out, nil
}

// childRows says how the child rows (selectors, DNS names, trust domains)
// of a batch of entries or nodes, sorted by ID, are found.
type childRows int

const (
	// byIDs: IN lists of the batch's IDs.
	byIDs childRows = iota
	// bySpan: every child row whose ID is between the batch's first and
	// last, one index range scan per table. Only for a batch that holds
	// every entry (node) in that span: an unfiltered page read in the
	// transaction the child rows are read in. It spares SQLite parsing
	// and probing IN lists of a thousand IDs per table and page (most of
	// a full load's time).
	bySpan
)

// childWhere is the condition on column (an entry or node ID) selecting the
// child rows of the sorted batch ids for span, with its arguments.
func childWhere(column string, ids []string, span childRows) (string, []any) {
	if span == bySpan {
		return " WHERE " + column + " >= ? AND " + column + " <= ?", []any{ids[0], ids[len(ids)-1]}
	}
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	return " WHERE " + column + " IN (" + placeholders(len(ids)) + ")", args
}

// loadEntryChildren fills selectors, DNS names and trust domains.
func (s *Store) loadEntryChildren(ctx context.Context, q queryer, entries []*datastore.Entry, span childRows) error {
	byID := make(map[string]*datastore.Entry, len(entries))
	for _, e := range entries {
		byID[e.ID] = e
	}
	size := maxInArgs
	if span == bySpan {
		size = max(len(entries), 1)
	}
	for _, c := range chunks(len(entries), size) {
		part := entries[c[0]:c[1]]
		ids := make([]string, len(part))
		for i, e := range part {
			ids[i] = e.ID
		}
		where, args := childWhere("entry_id", ids, span)
		err := scanRows(ctx, q, s.q("SELECT entry_id, type, value FROM entry_selectors"+where), args, func(r *sql.Rows) error {
			var id string
			var sel selector.Selector
			if err := r.Scan(&id, &sel.Type, &sel.Value); err != nil {
				return err
			}
			if e := byID[id]; e != nil {
				e.Selectors = append(e.Selectors, sel)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("load entry selectors: %w", err)
		}
		err = scanRows(ctx, q, s.q("SELECT entry_id, name FROM entry_dns_names"+where+" ORDER BY entry_id, pos"), args, func(r *sql.Rows) error {
			var id, name string
			if err := r.Scan(&id, &name); err != nil {
				return err
			}
			if e := byID[id]; e != nil {
				e.DNSNames = append(e.DNSNames, name)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("load entry DNS names: %w", err)
		}
		err = scanRows(ctx, q, s.q("SELECT entry_id, trust_domain FROM entry_federates_with"+where), args, func(r *sql.Rows) error {
			var id, td string
			if err := r.Scan(&id, &td); err != nil {
				return err
			}
			if e := byID[id]; e != nil {
				e.FederatesWith = append(e.FederatesWith, td)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("load entry trust domains: %w", err)
		}
	}
	for _, e := range entries {
		// Sort in Go: collation-independent, same order on every dialect.
		selector.Sort(e.Selectors)
		sort.Strings(e.FederatesWith)
	}
	return nil
}

// scanRows runs a query and calls fn for every row, closing the rows before
// returning (so the next statement on a transaction can run on any driver).
func scanRows(ctx context.Context, q queryer, query string, args []any, fn func(*sql.Rows) error) error {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return err
	}
	for rows.Next() {
		if err := fn(rows); err != nil {
			rows.Close()
			return err
		}
	}
	if err := rows.Close(); err != nil {
		return err
	}
	return rows.Err()
}

// entryWhere translates an EntryFilter into SQL conditions over "e".
func entryWhere(f datastore.EntryFilter) (*whereBuilder, error) {
	w := &whereBuilder{}
	if f.BySPIFFEID != "" {
		w.add("e.spiffe_id = ?", f.BySPIFFEID)
	}
	if f.ByParentID != "" {
		w.add("e.parent_id = ?", f.ByParentID)
	}
	if f.ByHint != nil {
		w.add("e.hint = ?", *f.ByHint)
	}
	if f.ByDownstream != nil {
		w.add("e.downstream = ?", *f.ByDownstream)
	}
	if len(f.BySelectors) > 0 {
		if err := selectorSet("entry_selectors", "entry_id", "e.id", f.BySelectors).apply(w, f.SelectorMatch); err != nil {
			return nil, fmt.Errorf("selector filter: %w", err)
		}
	}
	if len(f.ByFederatesWith) > 0 {
		if err := stringSet("entry_federates_with", "entry_id", "e.id", "trust_domain", f.ByFederatesWith).apply(w, f.FederatesMatch); err != nil {
			return nil, fmt.Errorf("federates-with filter: %w", err)
		}
	}
	return w, nil
}

// ListEntries lists entries matching f in ID order, one page at a time.
func (s *Store) ListEntries(ctx context.Context, f datastore.EntryFilter, p datastore.Page) ([]*datastore.Entry, string, error) {
	after, err := checkPage(p)
	if err != nil {
		return nil, "", fmt.Errorf("list entries: %w", err)
	}
	w, err := entryWhere(f)
	if err != nil {
		return nil, "", fmt.Errorf("list entries: %w", err)
	}
	// An unfiltered page holds every entry in its ID span.
	span := byIDs
	if len(w.conds) == 0 {
		span = bySpan
	}
	if after != "" {
		w.add("e.id > ?", after)
	}
	limit, largs := limitClause(p)
	var out []*datastore.Entry
	err = s.readTx(ctx, func(tx *sql.Tx) error {
		var err error
		out, err = s.loadEntries(ctx, tx, w.sql(), w.params(largs...), limit, span)
		return err
	})
	if err != nil {
		return nil, "", fmt.Errorf("list entries: %w", err)
	}
	next := ""
	if p.Size > 0 && len(out) > p.Size {
		out = out[:p.Size]
		next = encodePageToken(out[len(out)-1].ID)
	}
	return out, next, nil
}

// CountEntries counts the entries ListEntries would return for f.
func (s *Store) CountEntries(ctx context.Context, f datastore.EntryFilter) (int, error) {
	w, err := entryWhere(f)
	if err != nil {
		return 0, fmt.Errorf("count entries: %w", err)
	}
	var n int
	if err := s.reader(ctx).QueryRowContext(ctx, s.q("SELECT COUNT(*) FROM entries e"+w.sql()), w.params()...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count entries: %w", err)
	}
	return n, nil
}

// UpdateEntry changes the masked fields of entry e.ID (all fields when mask
// is nil) and bumps its revision.
func (s *Store) UpdateEntry(ctx context.Context, e *datastore.Entry, mask *datastore.EntryMask) (*datastore.Entry, error) {
	if e == nil || e.ID == "" {
		return nil, errors.New("update entry: entry ID is empty")
	}
	if !isText(e.ID) {
		return nil, fmt.Errorf("update entry: entry %s: %w", clip.Quote(e.ID), datastore.ErrNotFound)
	}
	if mask == nil {
		mask = &datastore.EntryMask{SPIFFEID: true, ParentID: true, Selectors: true, X509SVIDTTL: true, JWTSVIDTTL: true,
			DNSNames: true, FederatesWith: true, Admin: true, Downstream: true, Hint: true, StoreSVID: true, ExpiresAt: true}
	}
	var updated *datastore.Entry
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		// The row stays locked until the commit: concurrent updates of one
		// entry take turns (no lost revision).
		cur, err := s.loadEntries(ctx, tx, " WHERE e.id = ?", []any{e.ID}, s.dialect.forUpdate, byIDs)
		if err != nil {
			return err
		}
		if len(cur) == 0 {
			return fmt.Errorf("entry %s: %w", clip.Quote(e.ID), datastore.ErrNotFound)
		}
		n := cur[0]
		if mask.SPIFFEID {
			n.SPIFFEID = e.SPIFFEID
		}
		if mask.ParentID {
			n.ParentID = e.ParentID
		}
		if mask.Selectors {
			n.Selectors = e.Selectors
		}
		if mask.X509SVIDTTL {
			n.X509SVIDTTL = e.X509SVIDTTL
		}
		if mask.JWTSVIDTTL {
			n.JWTSVIDTTL = e.JWTSVIDTTL
		}
		if mask.DNSNames {
			n.DNSNames = e.DNSNames
		}
		if mask.FederatesWith {
			n.FederatesWith = e.FederatesWith
		}
		if mask.Admin {
			n.Admin = e.Admin
		}
		if mask.Downstream {
			n.Downstream = e.Downstream
		}
		if mask.Hint {
			n.Hint = e.Hint
		}
		if mask.StoreSVID {
			n.StoreSVID = e.StoreSVID
		}
		if mask.ExpiresAt {
			n.ExpiresAt = e.ExpiresAt
		}
		n, err = normalizeEntry(n)
		if err != nil {
			return fmt.Errorf("entry %s: %w", clip.Quote(e.ID), err)
		}
		if mask.FederatesWith && len(n.FederatesWith) > 0 {
			bundles, err := s.existing(ctx, tx, "SELECT trust_domain FROM bundles WHERE trust_domain IN (%s)"+s.dialect.forShare, n.FederatesWith)
			if err != nil {
				return err
			}
			if err := missingBundle(n.FederatesWith, bundles); err != nil {
				return err
			}
		}
		n.RevisionNumber++
		key := dupKey(n.SPIFFEID, n.ParentID, n.Selectors)
		var other string
		err = tx.QueryRowContext(ctx, s.q("SELECT id FROM entries WHERE spiffe_id = ? AND dup_key = ? AND id <> ?"), n.SPIFFEID, key, n.ID).Scan(&other)
		switch {
		case err == nil:
			return fmt.Errorf("entry %s would duplicate entry %s: %w", clip.Quote(n.ID), clip.Quote(other), datastore.ErrAlreadyExists)
		case !errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("check duplicates: %w", err)
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE entries SET spiffe_id = ?, parent_id = ?, dup_key = ?, x509_svid_ttl = ?, jwt_svid_ttl = ?,
admin = ?, downstream = ?, hint = ?, store_svid = ?, expires_at = ?, revision = ? WHERE id = ?`),
			n.SPIFFEID, n.ParentID, key, n.X509SVIDTTL, n.JWTSVIDTTL, n.Admin, n.Downstream, n.Hint, n.StoreSVID,
			n.ExpiresAt, n.RevisionNumber, n.ID); err != nil {
			return fmt.Errorf("update entry: %w", err)
		}
		if mask.Selectors {
			if err := s.replaceChildren(ctx, tx, "entry_selectors", n.ID, func(st *sql.Stmt) error {
				for _, sel := range n.Selectors {
					if _, err := st.ExecContext(ctx, n.ID, sel.Type, sel.Value); err != nil {
						return err
					}
				}
				return nil
			}, "INSERT INTO entry_selectors (entry_id, type, value) VALUES (?, ?, ?)"); err != nil {
				return err
			}
		}
		if mask.DNSNames {
			if err := s.replaceChildren(ctx, tx, "entry_dns_names", n.ID, func(st *sql.Stmt) error {
				for i, name := range n.DNSNames {
					if _, err := st.ExecContext(ctx, n.ID, i, name); err != nil {
						return err
					}
				}
				return nil
			}, "INSERT INTO entry_dns_names (entry_id, pos, name) VALUES (?, ?, ?)"); err != nil {
				return err
			}
		}
		if mask.FederatesWith {
			if err := s.replaceChildren(ctx, tx, "entry_federates_with", n.ID, func(st *sql.Stmt) error {
				for _, td := range n.FederatesWith {
					if _, err := st.ExecContext(ctx, n.ID, td); err != nil {
						return err
					}
				}
				return nil
			}, "INSERT INTO entry_federates_with (entry_id, trust_domain) VALUES (?, ?)"); err != nil {
				return err
			}
		}
		if err := s.entryEvent(ctx, tx, n.ID, datastore.EntryUpdated); err != nil {
			return err
		}
		updated = n
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("update entry: %w", err)
	}
	return updated, nil
}

// replaceChildren deletes the entry's rows of table and inserts new ones
// through fill with the prepared insert statement.
func (s *Store) replaceChildren(ctx context.Context, tx *sql.Tx, table, id string, fill func(*sql.Stmt) error, insert string) error {
	if _, err := tx.ExecContext(ctx, s.q("DELETE FROM "+table+" WHERE entry_id = ?"), id); err != nil {
		return fmt.Errorf("replace %s: %w", table, err)
	}
	st, err := tx.PrepareContext(ctx, s.q(insert))
	if err != nil {
		return fmt.Errorf("replace %s: %w", table, err)
	}
	defer st.Close()
	if err := fill(st); err != nil {
		return fmt.Errorf("replace %s: %w", table, err)
	}
	return nil
}

func (s *Store) entryEvent(ctx context.Context, tx *sql.Tx, id string, kind datastore.EntryEventKind) error {
	s.journaled(tx, datastore.ChangeEntries)
	if _, err := tx.ExecContext(ctx, s.q("INSERT INTO entry_events (entry_id, kind, created_at) VALUES (?, ?, ?)"), id, int(kind), s.now()); err != nil {
		return fmt.Errorf("record entry event: %w", err)
	}
	return nil
}

// DeleteEntries deletes the entries by ID, one result per ID.
func (s *Store) DeleteEntries(ctx context.Context, ids []string) ([]error, error) {
	errs := make([]error, len(ids))
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		clear(errs) // a retried transaction starts over
		st, err := tx.PrepareContext(ctx, s.q("DELETE FROM entries WHERE id = ?"))
		if err != nil {
			return err
		}
		defer st.Close()
		for i, id := range ids {
			if !isText(id) {
				errs[i] = fmt.Errorf("entry %s: %w", clip.Quote(id), datastore.ErrNotFound)
				continue
			}
			res, err := st.ExecContext(ctx, id)
			if err != nil {
				return fmt.Errorf("delete entry %s: %w", clip.Quote(id), err)
			}
			n, err := res.RowsAffected()
			if err != nil {
				return err
			}
			if n == 0 {
				errs[i] = fmt.Errorf("entry %s: %w", clip.Quote(id), datastore.ErrNotFound)
				continue
			}
			if err := s.entryEvent(ctx, tx, id, datastore.EntryDeleted); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("delete entries: %w", err)
	}
	return errs, nil
}

// PruneEntries deletes the entries whose ExpiresAt (when set) is before t.
func (s *Store) PruneEntries(ctx context.Context, before time.Time) (int, error) {
	var n int
	err := s.writeTx(ctx, func(tx *sql.Tx) error {
		var ids []string
		err := scanRows(ctx, tx, s.q("SELECT id FROM entries WHERE expires_at <> 0 AND expires_at < ?"), []any{cutoff(before)}, func(r *sql.Rows) error {
			var id string
			if err := r.Scan(&id); err != nil {
				return err
			}
			ids = append(ids, id)
			return nil
		})
		if err != nil {
			return fmt.Errorf("find expired entries: %w", err)
		}
		for _, id := range ids {
			if _, err := tx.ExecContext(ctx, s.q("DELETE FROM entries WHERE id = ?"), id); err != nil {
				return fmt.Errorf("delete entry %s: %w", clip.Quote(id), err)
			}
			if err := s.entryEvent(ctx, tx, id, datastore.EntryDeleted); err != nil {
				return err
			}
		}
		n = len(ids)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("prune entries: %w", err)
	}
	if n > 0 {
		s.log.Info("Pruned expired entries", "count", n)
	}
	return n, nil
}

// ListEntryEvents returns entry events with ID > after, oldest first.
func (s *Store) ListEntryEvents(ctx context.Context, after int64, limit int) ([]datastore.EntryEvent, error) {
	query := "SELECT id, entry_id, kind FROM entry_events WHERE id > ? ORDER BY id"
	args := []any{after}
	if limit > 0 {
		query += " LIMIT ?"
		args = append(args, limit)
	}
	var out []datastore.EntryEvent
	err := scanRows(ctx, s.r, s.q(query), args, func(r *sql.Rows) error {
		var ev datastore.EntryEvent
		var kind int
		if err := r.Scan(&ev.ID, &ev.EntryID, &kind); err != nil {
			return err
		}
		ev.Kind = datastore.EntryEventKind(kind)
		out = append(out, ev)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list entry events: %w", err)
	}
	return out, nil
}

// LastEntryEventID returns the highest entry event ID (0 if none), pruned
// ones included.
func (s *Store) LastEntryEventID(ctx context.Context) (int64, error) {
	return s.lastEventID(ctx, "entry_events")
}

func (s *Store) lastEventID(ctx context.Context, table string) (int64, error) {
	// The pruned horizon too: a journal pruned empty keeps its position
	// (IDs are never reused), so a follower loading then does not start
	// again from 0.
	var v sql.NullInt64
	err := s.r.QueryRowContext(ctx, s.q("SELECT MAX(x) FROM (SELECT MAX(id) AS x FROM "+table+
		" UNION ALL SELECT pruned_through AS x FROM journal_horizons WHERE journal = ?) AS t"), table).Scan(&v)
	if err != nil {
		return 0, fmt.Errorf("last event of %s: %w", strings.TrimSuffix(table, "s"), err)
	}
	return v.Int64, nil
}

// journalTables are the change journals, in JournalHorizons' order.
var journalTables = [...]string{"entry_events", "node_events", "bundle_events"}

// pruneBatch bounds the events one PruneEvents transaction deletes from a
// journal: a journal that grew for long is pruned in many short
// transactions, not one that holds the write lock (SQLite: every writer)
// for long.
var pruneBatch int64 = 10000

// PruneEvents deletes the journal events (entry, node and bundle) created
// before t, oldest first, and returns how many it deleted. Journals are
// pruned by ID: every event at or below the highest ID created before t
// goes (one with a lower ID that committed after t too), and that ID is
// recorded as the journal's horizon (JournalHorizons), so a follower
// whose position is below it, or that still waits for a skipped ID at or
// below it, knows it may have missed changes and reloads in full.
func (s *Store) PruneEvents(ctx context.Context, before time.Time) (int, error) {
	total := 0
	for _, table := range journalTables {
		n, err := s.pruneJournal(ctx, table, cutoff(before))
		total += n
		if err != nil {
			return total, fmt.Errorf("prune events: %w", err)
		}
	}
	return total, nil
}

// pruneJournal deletes the events of table at or below the highest ID
// created before the unix time before, pruneBatch at a time, moving the
// journal's horizon with each batch.
func (s *Store) pruneJournal(ctx context.Context, table string, before int64) (int, error) {
	var hi sql.NullInt64
	if err := s.w.QueryRowContext(ctx, s.q("SELECT MAX(id) FROM "+table+" WHERE created_at < ?"), before).Scan(&hi); err != nil {
		return 0, fmt.Errorf("%s: %w", table, err)
	}
	if !hi.Valid {
		return 0, nil
	}
	total := 0
	for {
		var n int
		done := true
		err := s.writeTx(ctx, func(tx *sql.Tx) error {
			n, done = 0, true
			var lo sql.NullInt64
			if err := tx.QueryRowContext(ctx, "SELECT MIN(id) FROM "+table).Scan(&lo); err != nil {
				return err
			}
			upTo := hi.Int64
			if lo.Valid && lo.Int64+pruneBatch-1 < upTo {
				upTo, done = lo.Int64+pruneBatch-1, false
			}
			res, err := tx.ExecContext(ctx, s.q("DELETE FROM "+table+" WHERE id <= ?"), upTo)
			if err != nil {
				return err
			}
			c, err := res.RowsAffected()
			if err != nil {
				return err
			}
			n = int(c)
			// Another server pruning at once may have gone further.
			_, err = tx.ExecContext(ctx, s.q("UPDATE journal_horizons SET pruned_through = ? WHERE journal = ? AND pruned_through < ?"), upTo, table, upTo)
			return err
		})
		if err != nil {
			return total, fmt.Errorf("%s: %w", table, err)
		}
		total += n
		if done {
			return total, nil
		}
	}
}

// JournalHorizons returns how far each journal has been pruned: every
// event ID up to the horizon is gone (0: none pruned).
func (s *Store) JournalHorizons(ctx context.Context) (datastore.JournalHorizons, error) {
	var h datastore.JournalHorizons
	err := scanRows(ctx, s.r, "SELECT journal, pruned_through FROM journal_horizons", nil, func(r *sql.Rows) error {
		var journal string
		var id int64
		if err := r.Scan(&journal, &id); err != nil {
			return err
		}
		switch journal {
		case "entry_events":
			h.Entry = id
		case "node_events":
			h.Node = id
		case "bundle_events":
			h.Bundle = id
		}
		return nil
	})
	if err != nil {
		return h, fmt.Errorf("read journal horizons: %w", err)
	}
	return h, nil
}
