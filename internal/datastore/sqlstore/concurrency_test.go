package sqlstore

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sigil-spiffe/sigil/internal/datastore"
)

// Concurrent writers, as several servers sharing one database are. Each
// test opens several stores on the fixture's database (separate connection
// pools: "servers") and starts their writes together. On SQLite the writes
// are serialized by the database; on PostgreSQL they interleave, and the
// row locks, retries and ON CONFLICT clauses of the store must give the
// result of some serial order.

const servers = 4

// stores returns the fixture's store and servers-1 more on its database.
func (f *fixture) stores(t *testing.T) []*Store {
	out := []*Store{f.store}
	for len(out) < servers {
		out = append(out, f.open(t))
	}
	return out
}

// together runs fn(i) for i in [0, n) in goroutines released at once and
// waits for them.
func together(n int, fn func(i int)) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			fn(i)
		})
	}
	close(start)
	wg.Wait()
}

// TestConcurrentDuplicateCreates: servers creating the same entry at once
// (same SPIFFE ID, parent and selectors, or the same entry ID) get exactly
// one success; every other gets ErrAlreadyExists for that entry, never a
// failure of its whole batch.
func (x suite) TestConcurrentDuplicateCreates(t *testing.T) {
	f := x.newFixture(t)
	ss := f.stores(t)
	ctx := context.Background()
	for round := range 6 {
		e := func() *datastore.Entry {
			ent := &datastore.Entry{SPIFFEID: fmt.Sprintf("spiffe://td/dup/%d", round), ParentID: "spiffe://td/p", Selectors: sels("u:1", "g:2")}
			if round%2 == 1 {
				ent.ID = fmt.Sprintf("same-id-%d", round)
				ent.SPIFFEID += "/" // the ID collides, not the tuple
			}
			return ent
		}
		const n = 3 * servers
		errs := make([]error, n)
		together(n, func(i int) {
			ent := e()
			if round%2 == 1 {
				ent.SPIFFEID += fmt.Sprint(i)
			}
			res, err := ss[i%servers].CreateEntries(ctx, []*datastore.Entry{ent})
			if err != nil {
				errs[i] = fmt.Errorf("whole batch failed: %w", err)
				return
			}
			errs[i] = res[0].Err
		})
		wins := 0
		for i, err := range errs {
			switch {
			case err == nil:
				wins++
			case !errors.Is(err, datastore.ErrAlreadyExists):
				t.Fatalf("round %d, writer %d: %v, want ErrAlreadyExists", round, i, err)
			}
		}
		if wins != 1 {
			t.Fatalf("round %d: %d creates of one entry succeeded, want 1", round, wins)
		}
	}
	if n, _ := f.store.CountEntries(ctx, datastore.EntryFilter{}); n != 6 {
		t.Fatalf("%d entries stored, want 6", n)
	}
}

// TestConcurrentOverlappingBatches: batches naming the same entries in
// different orders (which deadlock on PostgreSQL unless retried) all
// complete; each entry is stored once and created by exactly one batch.
func (x suite) TestConcurrentOverlappingBatches(t *testing.T) {
	f := x.newFixture(t)
	ss := f.stores(t)
	ctx := context.Background()
	const entries = 40
	mk := func(j int) *datastore.Entry {
		return &datastore.Entry{SPIFFEID: fmt.Sprintf("spiffe://td/o/%d", j), ParentID: "spiffe://td/p", Selectors: sels("u:1")}
	}
	created := make([][]string, 2*servers)
	together(2*servers, func(i int) {
		batch := make([]*datastore.Entry, entries)
		for j := range entries {
			if i%2 == 0 {
				batch[j] = mk(j)
			} else {
				batch[j] = mk(entries - 1 - j)
			}
		}
		res, err := ss[i%servers].CreateEntries(ctx, batch)
		if err != nil {
			t.Errorf("batch %d failed: %v", i, err)
			return
		}
		for j, r := range res {
			switch {
			case r.Err == nil:
				created[i] = append(created[i], r.Entry.SPIFFEID)
			case !errors.Is(r.Err, datastore.ErrAlreadyExists):
				t.Errorf("batch %d entry %d: %v", i, j, r.Err)
			}
		}
	})
	var all []string
	for _, c := range created {
		all = append(all, c...)
	}
	slices.Sort(all)
	if len(all) != entries || len(slices.Compact(all)) != entries {
		t.Fatalf("%d creations reported for %d entries (each must be created exactly once)", len(all), entries)
	}
	if n, _ := f.store.CountEntries(ctx, datastore.EntryFilter{}); n != entries {
		t.Fatalf("%d entries stored, want %d", n, entries)
	}
	evs, err := f.store.ListEntryEvents(ctx, 0, 0)
	if err != nil || len(evs) != entries {
		t.Fatalf("%d entry events, want one per entry (%v)", len(evs), err)
	}
}

// TestConcurrentAttestWithOneToken: one join token presented to every
// server at once attests exactly one agent.
func (x suite) TestConcurrentAttestWithOneToken(t *testing.T) {
	f := x.newFixture(t)
	ss := f.stores(t)
	ctx := context.Background()
	for round := range 4 {
		hash := sha256.Sum256(fmt.Append(nil, "token", round))
		if err := f.store.CreateJoinToken(ctx, &datastore.JoinToken{Hash: hash, ExpiresAt: t0.Unix() + 60}); err != nil {
			t.Fatal(err)
		}
		const n = 2 * servers
		errs := make([]error, n)
		together(n, func(i int) {
			_, errs[i] = ss[i%servers].AttestNode(ctx, &datastore.NodeAttestation{JoinToken: &hash, ValidAt: t0.Unix(), MustBeNew: true,
				Node: &datastore.AttestedNode{SPIFFEID: fmt.Sprintf("spiffe://td/agent/%d/%d", round, i), AttestationType: "join_token", CertSerial: "1"}})
		})
		wins := 0
		for i, err := range errs {
			switch {
			case err == nil:
				wins++
			case !errors.Is(err, datastore.ErrNotFound):
				t.Fatalf("round %d, server %d: %v, want ErrNotFound (token used)", round, i%servers, err)
			}
		}
		if wins != 1 {
			t.Fatalf("round %d: one token attested %d agents", round, wins)
		}
	}
	if n, _ := f.store.CountNodes(ctx, datastore.NodeFilter{}); n != 4 {
		t.Fatalf("%d agents, want 4", n)
	}
}

// TestConcurrentBanWins: a ban racing a re-attestation, a renewal and its
// promotion on other servers is never undone: whatever the order, the
// node ends banned.
func (x suite) TestConcurrentBanWins(t *testing.T) {
	f := x.newFixture(t)
	ss := f.stores(t)
	ctx := context.Background()
	for round := range 8 {
		id := fmt.Sprintf("spiffe://td/agent/ban/%d", round)
		if _, err := f.store.CreateNode(ctx, &datastore.AttestedNode{SPIFFEID: id, AttestationType: "x509pop", CertSerial: "1", NewCertSerial: "2", CanReattest: true}); err != nil {
			t.Fatal(err)
		}
		together(4, func(i int) {
			s := ss[i%servers]
			var err error
			switch i {
			case 0: // the ban
				_, err = s.UpdateNode(ctx, &datastore.AttestedNode{SPIFFEID: id}, &datastore.NodeMask{CertSerial: true, NewCertSerial: true})
			case 1: // re-attestation
				_, err = s.AttestNode(ctx, &datastore.NodeAttestation{Node: &datastore.AttestedNode{SPIFFEID: id, CertSerial: "3", CanReattest: true, Selectors: sels("x:1")}})
				if errors.Is(err, datastore.ErrBanned) {
					err = nil
				}
			case 2: // renewal
				_, err = s.RenewNode(ctx, id, "4", 40)
				if errors.Is(err, datastore.ErrBanned) {
					err = nil
				}
			case 3: // promotion of the pending serial
				_, err = s.PromoteNodeSerial(ctx, id, "2")
				if errors.Is(err, datastore.ErrConflict) {
					err = nil
				}
			}
			if err != nil {
				t.Errorf("round %d, writer %d: %v", round, i, err)
			}
		})
		n, err := f.store.GetNode(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if !n.Banned() {
			t.Fatalf("round %d: ban undone by a concurrent write: %+v", round, n)
		}
	}
}

// TestConcurrentBundleAppends: every server publishing its own key to one
// bundle at once: no key is lost, and the sequence number counts every
// change.
func (x suite) TestConcurrentBundleAppends(t *testing.T) {
	f := x.newFixture(t)
	ss := f.stores(t)
	ctx := context.Background()
	const n = 3 * servers
	together(n, func(i int) {
		_, err := ss[i%servers].AppendBundle(ctx, &datastore.Bundle{TrustDomain: "td",
			JWTKeys: []datastore.JWTKey{{KeyID: fmt.Sprintf("k%d", i), PublicKey: []byte{byte(i)}}}})
		if err != nil {
			t.Errorf("append %d: %v", i, err)
		}
	})
	b, err := f.store.GetBundle(ctx, "td")
	if err != nil {
		t.Fatal(err)
	}
	if len(b.JWTKeys) != n || b.SequenceNumber != n {
		t.Fatalf("bundle has %d keys and sequence number %d after %d appends, want %d and %d (a lost update)", len(b.JWTKeys), b.SequenceNumber, n, n, n)
	}
}

// TestConcurrentEntryUpdates: concurrent updates of one entry on several
// servers all count: the revision ends at their number, one event each.
func (x suite) TestConcurrentEntryUpdates(t *testing.T) {
	f := x.newFixture(t)
	ss := f.stores(t)
	ctx := context.Background()
	e := mustCreate(t, f.store, &datastore.Entry{SPIFFEID: "spiffe://td/u", ParentID: "spiffe://td/p", Selectors: sels("u:1")})[0]
	before, _ := f.store.LastEntryEventID(ctx)
	const n = 3 * servers
	together(n, func(i int) {
		if _, err := ss[i%servers].UpdateEntry(ctx, &datastore.Entry{ID: e.ID, Hint: fmt.Sprint(i)}, &datastore.EntryMask{Hint: true}); err != nil {
			t.Errorf("update %d: %v", i, err)
		}
	})
	got, err := f.store.GetEntry(ctx, e.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.RevisionNumber != n {
		t.Fatalf("revision %d after %d updates (a lost update)", got.RevisionNumber, n)
	}
	evs, _ := f.store.ListEntryEvents(ctx, before, 0)
	if len(evs) != n {
		t.Fatalf("%d events for %d updates", len(evs), n)
	}
}

// TestDeleteBundleRacesFederatedCreate: a bundle delete racing entry
// writes that federate with its trust domain never leaves an entry
// federating with a missing bundle.
func (x suite) TestDeleteBundleRacesFederatedCreate(t *testing.T) {
	f := x.newFixture(t)
	ss := f.stores(t)
	ctx := context.Background()
	for round := range 8 {
		td := fmt.Sprintf("fed%d.org", round)
		addBundles(t, f.store, td)
		plain := mustCreate(t, f.store, &datastore.Entry{SPIFFEID: fmt.Sprintf("spiffe://td/plain/%d", round), ParentID: "spiffe://td/p", Selectors: sels("u:1")})[0]
		together(3, func(i int) {
			s := ss[i%servers]
			switch i {
			case 0:
				if err := s.DeleteBundle(ctx, td); err != nil && !errors.Is(err, datastore.ErrBundleInUse) {
					t.Errorf("delete: %v", err)
				}
			case 1:
				res, err := s.CreateEntries(ctx, []*datastore.Entry{{SPIFFEID: fmt.Sprintf("spiffe://td/fed/%d", round), ParentID: "spiffe://td/p", Selectors: sels("u:1"), FederatesWith: []string{td}}})
				if err == nil {
					err = res[0].Err
				}
				if err != nil && !errors.Is(err, datastore.ErrNoFederatedBundle) {
					t.Errorf("create: %v", err)
				}
			case 2:
				_, err := s.UpdateEntry(ctx, &datastore.Entry{ID: plain.ID, FederatesWith: []string{td}}, &datastore.EntryMask{FederatesWith: true})
				if err != nil && !errors.Is(err, datastore.ErrNoFederatedBundle) {
					t.Errorf("update: %v", err)
				}
			}
		})
		_, berr := f.store.GetBundle(ctx, td)
		users, err := f.store.CountEntries(ctx, datastore.EntryFilter{ByFederatesWith: []string{td}, FederatesMatch: datastore.MatchAny})
		if err != nil {
			t.Fatal(err)
		}
		if errors.Is(berr, datastore.ErrNotFound) && users > 0 {
			t.Fatalf("round %d: %d entries federate with %s, whose bundle was deleted", round, users, td)
		}
	}
}

// TestConcurrentJournals: every write of many concurrent writers has
// exactly its journal events, with distinct IDs.
func (x suite) TestConcurrentJournals(t *testing.T) {
	f := x.newFixture(t)
	ss := f.stores(t)
	ctx := context.Background()
	const perWriter = 10
	together(2*servers, func(i int) {
		s := ss[i%servers]
		for j := range perWriter {
			id := fmt.Sprintf("spiffe://td/agent/%d/%d", i, j)
			if _, err := s.CreateNode(ctx, &datastore.AttestedNode{SPIFFEID: id, AttestationType: "join_token", CertSerial: "1"}); err != nil {
				t.Errorf("create node: %v", err)
			}
			if _, err := s.CreateEntries(ctx, []*datastore.Entry{{ID: fmt.Sprintf("e-%d-%d", i, j), SPIFFEID: id + "/w", ParentID: id, Selectors: sels("u:1")}}); err != nil {
				t.Errorf("create entry: %v", err)
			}
			if _, err := s.SetBundle(ctx, &datastore.Bundle{TrustDomain: fmt.Sprintf("td%d.org", j%3)}); err != nil {
				t.Errorf("set bundle: %v", err)
			}
		}
	})
	writes := 2 * servers * perWriter
	entryEvs, err1 := f.store.ListEntryEvents(ctx, 0, 0)
	nodeEvs, err2 := f.store.ListNodeEvents(ctx, 0, 0)
	bundleEvs, err3 := f.store.ListBundleEvents(ctx, 0, 0)
	if err := errors.Join(err1, err2, err3); err != nil {
		t.Fatal(err)
	}
	if len(entryEvs) != writes || len(nodeEvs) != writes || len(bundleEvs) != writes {
		t.Fatalf("%d entry, %d node, %d bundle events for %d writes of each", len(entryEvs), len(nodeEvs), len(bundleEvs), writes)
	}
	seen := map[string]bool{}
	for i, ev := range entryEvs {
		if i > 0 && ev.ID <= entryEvs[i-1].ID {
			t.Fatalf("entry event IDs not increasing: %d after %d", ev.ID, entryEvs[i-1].ID)
		}
		seen[ev.EntryID] = true
	}
	if len(seen) != writes {
		t.Fatalf("events name %d entries, want %d", len(seen), writes)
	}
}

// TestWriteTxRetries: a transaction failing with a deadlock, a
// serialization failure or a racing unique violation runs again from the
// start (PostgreSQL); a unique violation that persists is ErrAlreadyExists
// after maxWriteAttempts runs; other errors are not retried. On SQLite
// nothing is retried (its writers are serialized).
func (x suite) TestWriteTxRetries(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	fail := func(code string) error {
		return fmt.Errorf("statement: %w", &pgconn.PgError{Code: code, Message: "injected"})
	}
	for _, code := range []string{pgDeadlockDetected, pgSerializationFailure, pgUniqueViolation} {
		runs := 0
		err := s.writeTx(ctx, func(tx *sql.Tx) error {
			runs++
			if runs < 3 {
				return fail(code)
			}
			return nil
		})
		switch {
		case x.name == "sqlite3" && (runs != 1 || err == nil):
			t.Errorf("%s on SQLite: %d runs, %v; want one run and the error", code, runs, err)
		case x.name == "postgres" && (runs != 3 || err != nil):
			t.Errorf("%s: %d runs, %v; want a success at the third run", code, runs, err)
		}
	}
	runs := 0
	err := s.writeTx(ctx, func(tx *sql.Tx) error { runs++; return fail(pgUniqueViolation) })
	if x.name == "postgres" && (runs != maxWriteAttempts || !errors.Is(err, datastore.ErrAlreadyExists)) {
		t.Errorf("a unique violation every time: %d runs, %v; want %d runs and ErrAlreadyExists", runs, err, maxWriteAttempts)
	}
	runs = 0
	err = s.writeTx(ctx, func(tx *sql.Tx) error { runs++; return fail("23503") })
	if runs != 1 || err == nil {
		t.Errorf("a foreign key violation: %d runs, %v; want one run and the error", runs, err)
	}
	// A real PostgreSQL deadlock: two transactions lock two rows in
	// opposite orders; the one PostgreSQL aborts runs again and both end
	// committed.
	if x.name != "postgres" {
		return
	}
	if err := s.SetCAJournal(ctx, "a", []byte("0")); err != nil {
		t.Fatal(err)
	}
	if err := s.SetCAJournal(ctx, "b", []byte("0")); err != nil {
		t.Fatal(err)
	}
	other := f.open(t)
	var first sync.WaitGroup
	first.Add(2)
	var mu sync.Mutex
	runsBy := map[string]int{}
	lockBoth := func(st *Store, name, one, two string) error {
		return st.writeTx(ctx, func(tx *sql.Tx) error {
			mu.Lock()
			runsBy[name]++
			n := runsBy[name]
			mu.Unlock()
			if _, err := tx.ExecContext(ctx, "UPDATE ca_journals SET data = '\\x01' WHERE name = $1", one); err != nil {
				return err
			}
			if n == 1 {
				first.Done() // both hold their first row before asking for the second
				first.Wait()
			}
			_, err := tx.ExecContext(ctx, "UPDATE ca_journals SET data = '\\x02' WHERE name = $1", two)
			return err
		})
	}
	errs := make([]error, 2)
	together(2, func(i int) {
		if i == 0 {
			errs[i] = lockBoth(s, "ab", "a", "b")
		} else {
			errs[i] = lockBoth(other, "ba", "b", "a")
		}
	})
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("deadlocked transactions: %v", err)
	}
	if runsBy["ab"]+runsBy["ba"] != 3 {
		t.Fatalf("runs %v: want one of the two run again after PostgreSQL broke the deadlock", runsBy)
	}
}
