package sqlstore

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

type fixture struct {
	store *Store
	path  string
	clk   *clock.Fake
}

// newFixture opens a store on a fresh file in t.TempDir().
func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{path: filepath.Join(t.TempDir(), "datastore.sqlite3"), clk: clock.NewFake(t0)}
	f.store = f.open(t)
	return f
}

func (f *fixture) open(t *testing.T) *Store {
	t.Helper()
	s, err := Open(context.Background(), Config{DatabaseType: "sqlite3", ConnectionString: f.path, Clock: f.clk})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// reopen closes the store and opens the same file again.
func (f *fixture) reopen(t *testing.T) {
	t.Helper()
	if err := f.store.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	f.store = f.open(t)
}

func sels(ss ...string) []selector.Selector {
	out := make([]selector.Selector, 0, len(ss))
	for _, s := range ss {
		sel, err := selector.Parse(s)
		if err != nil {
			panic(err)
		}
		out = append(out, sel)
	}
	return out
}

func mustCreate(t *testing.T, s *Store, es ...*datastore.Entry) []*datastore.Entry {
	t.Helper()
	res, err := s.CreateEntries(context.Background(), es)
	if err != nil {
		t.Fatalf("CreateEntries: %v", err)
	}
	out := make([]*datastore.Entry, len(res))
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("CreateEntries[%d]: %v", i, r.Err)
		}
		out[i] = r.Entry
	}
	return out
}

func wantErr(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error = %v, want %v", err, target)
	}
}

func entryIDs(es []*datastore.Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.ID
	}
	slices.Sort(out)
	return out
}

func ptr[T any](v T) *T { return &v }

// addBundles stores an (empty) bundle for each trust domain, so entries may
// federate with them.
func addBundles(t *testing.T, s *Store, tds ...string) {
	t.Helper()
	for _, td := range tds {
		if _, err := s.SetBundle(context.Background(), &datastore.Bundle{TrustDomain: td}); err != nil {
			t.Fatalf("SetBundle %s: %v", td, err)
		}
	}
}
