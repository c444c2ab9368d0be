package dsmetrics_test

import (
	"context"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/datastore/dsmetrics"
	"github.com/sigil-spiffe/sigil/internal/datastore/sqlstore"
	"github.com/sigil-spiffe/sigil/internal/server/entrycache"
)

type op struct {
	name   string
	failed bool
}

type recorder struct {
	mu  sync.Mutex
	ops []op
}

func (r *recorder) DatastoreOperation(name string, _ time.Duration, failed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, op{name, failed})
}

func (r *recorder) take() []op {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.ops
	r.ops = nil
	return out
}

// Store has exactly *sqlstore.Store's method set, signatures included: a
// method added to sqlstore without regenerating the wrapper would be
// hidden from whoever looks for it through an interface. Fix: go generate
// ./internal/datastore/dsmetrics.
func TestSameMethodSet(t *testing.T) {
	inner := reflect.TypeFor[*sqlstore.Store]()
	outer := reflect.TypeFor[*dsmetrics.Store]()
	for i := 0; i < inner.NumMethod(); i++ {
		m := inner.Method(i)
		w, ok := outer.MethodByName(m.Name)
		if !ok {
			t.Errorf("dsmetrics.Store lacks %s: run go generate ./internal/datastore/dsmetrics", m.Name)
			continue
		}
		if !sameSignature(m.Type, w.Type) {
			t.Errorf("dsmetrics.Store.%s is %s, sqlstore's is %s: run go generate ./internal/datastore/dsmetrics", m.Name, w.Type, m.Type)
		}
	}
	if _, ok := any(&dsmetrics.Store{}).(entrycache.BundleJournal); !ok {
		t.Error("the entry cache does not see the bundle journal through the wrapper")
	}
}

func sameSignature(a, b reflect.Type) bool {
	if a.NumIn() != b.NumIn() || a.NumOut() != b.NumOut() || a.IsVariadic() != b.IsVariadic() {
		return false
	}
	for i := 1; i < a.NumIn(); i++ { // In(0) is the receiver
		if a.In(i) != b.In(i) {
			return false
		}
	}
	for i := 0; i < a.NumOut(); i++ {
		if a.Out(i) != b.Out(i) {
			return false
		}
	}
	return true
}

// Every operation (a method taking a context and returning an error, but
// Listen, which runs for the store's lifetime) is observed under its name,
// even when it panics.
func TestEveryOperationObserved(t *testing.T) {
	rec := &recorder{}
	s := dsmetrics.Wrap(panicking{}, rec)
	v := reflect.ValueOf(s)
	ctxType := reflect.TypeFor[context.Context]()
	errType := reflect.TypeFor[error]()
	n := 0
	for i := 0; i < v.NumMethod(); i++ {
		m := v.Type().Method(i)
		mt := m.Type
		if mt.NumIn() < 2 || mt.In(1) != ctxType || mt.NumOut() == 0 || mt.Out(mt.NumOut()-1) != errType || m.Name == "Listen" {
			continue
		}
		args := []reflect.Value{}
		for j := 1; j < mt.NumIn(); j++ {
			args = append(args, reflect.Zero(mt.In(j)))
		}
		args[0] = reflect.ValueOf(context.Background())
		func() {
			defer func() { _ = recover() }()
			v.Method(i).Call(args)
		}()
		got := rec.take()
		if len(got) != 1 || got[0].name != m.Name {
			t.Errorf("%s: observed %v", m.Name, got)
		}
		n++
	}
	if n < 40 {
		t.Fatalf("only %d operations found", n)
	}
}

// panicking is an Inner whose every method panics (a nil interface).
type panicking struct{ dsmetrics.Inner }

// On a real SQLite store: answers (not found, already exists) are not
// failures; a store that cannot work (closed) fails.
func TestFailures(t *testing.T) {
	st, err := sqlstore.Open(context.Background(), sqlstore.Config{DatabaseType: "sqlite3", ConnectionString: filepath.Join(t.TempDir(), "ds.sqlite3")})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	s := dsmetrics.Wrap(st, rec)
	ctx := context.Background()
	if _, err := s.GetEntry(ctx, "nope"); err == nil {
		t.Fatal("GetEntry of a missing entry succeeded")
	}
	tok := &datastore.JoinToken{Hash: [32]byte{1}, ExpiresAt: time.Now().Add(time.Hour).Unix()}
	if err := s.CreateJoinToken(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateJoinToken(ctx, tok); err == nil {
		t.Fatal("duplicate join token accepted")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetNode(ctx, "spiffe://example.org/x"); err == nil {
		t.Fatal("GetNode on a closed store succeeded")
	}
	want := []op{{"GetEntry", false}, {"CreateJoinToken", false}, {"CreateJoinToken", false}, {"GetNode", true}}
	if got := rec.take(); !reflect.DeepEqual(got, want) {
		t.Fatalf("observed %v, want %v", got, want)
	}
}
