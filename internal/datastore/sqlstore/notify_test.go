package sqlstore

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/datastore"
)

// changes records what OnChange reports.
type changes struct {
	mu  sync.Mutex
	got []datastore.Change
}

func (c *changes) add(ch datastore.Change) {
	c.mu.Lock()
	c.got = append(c.got, ch)
	c.mu.Unlock()
}

// take returns and clears what was recorded.
func (c *changes) take() []datastore.Change {
	c.mu.Lock()
	defer c.mu.Unlock()
	got := c.got
	c.got = nil
	return got
}

// wait waits until a recorded change includes want and clears what was
// recorded.
func (c *changes) wait(t *testing.T, want datastore.Change) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		for _, ch := range c.take() {
			if ch&want == want {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no change %s reported within 20s", want)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestOnChange: a committed write that appends to a journal reports it
// before it returns, naming the journal; a write without a journal, and
// a failed one, report nothing.
func (x suite) TestOnChange(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	var c changes
	s.OnChange(c.add)
	step := func(what string, want []datastore.Change, write func() error) {
		t.Helper()
		err := write()
		if want != nil && err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		got := c.take()
		if len(got) != len(want) {
			t.Fatalf("%s: reported %v, want %v", what, got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("%s: reported %v, want %v", what, got, want)
			}
		}
	}
	step("create entry", []datastore.Change{datastore.ChangeEntries}, func() error {
		_, err := s.CreateEntries(ctx, []*datastore.Entry{{SPIFFEID: "spiffe://example.org/w", ParentID: "spiffe://example.org/n", Selectors: sels("unix:uid:1")}})
		return err
	})
	step("create join token", []datastore.Change{}, func() error {
		return s.CreateJoinToken(ctx, &datastore.JoinToken{Hash: [32]byte{1}, ExpiresAt: t0.Unix() + 600})
	})
	step("create node", []datastore.Change{datastore.ChangeNodes}, func() error {
		_, err := s.CreateNode(ctx, &datastore.AttestedNode{SPIFFEID: "spiffe://example.org/n", AttestationType: "join_token", CertSerial: "1", CertNotAfter: t0.Unix() + 600})
		return err
	})
	step("append bundle", []datastore.Change{datastore.ChangeBundles}, func() error {
		_, err := s.AppendBundle(ctx, &datastore.Bundle{TrustDomain: "example.org", JWTKeys: []datastore.JWTKey{{KeyID: "k", PublicKey: []byte{1}}}})
		return err
	})
	f.exec(t, f.b.failInserts("entry_selectors"))
	step("failed entry create", nil, func() error {
		_, err := s.CreateEntries(ctx, []*datastore.Entry{{SPIFFEID: "spiffe://example.org/w2", ParentID: "spiffe://example.org/n", Selectors: sels("unix:uid:2")}})
		if err == nil {
			t.Fatal("create succeeded despite the injected failure")
		}
		return err
	})
}

// TestListen: on PostgreSQL a server's listener reports the commits of
// another store on the database (another server), each naming its
// journals, reconnects when its connection is killed (reporting every
// journal then: it may have missed commits), and stops with ctx. On
// SQLite it returns at once.
func (x suite) TestListen(t *testing.T) {
	f := x.newFixture(t)
	other := f.open(t) // another server on the same database
	ctx, cancel := context.WithCancel(context.Background())
	var c changes
	f.store.OnChange(c.add)
	done := make(chan error, 1)
	go func() { done <- f.store.Listen(ctx) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Listen: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("Listen did not return after its context ended")
		}
	}()
	if x.name != postgresDialect.name {
		select {
		case err := <-done:
			done <- err
			return
		case <-time.After(20 * time.Second):
			t.Fatal("Listen on SQLite did not return")
		}
	}
	c.wait(t, datastore.ChangeAll) // connected
	bg := context.Background()
	if _, err := other.CreateEntries(bg, []*datastore.Entry{{SPIFFEID: "spiffe://example.org/w", ParentID: "spiffe://example.org/n", Selectors: sels("unix:uid:1")}}); err != nil {
		t.Fatal(err)
	}
	c.wait(t, datastore.ChangeEntries)
	if _, err := other.CreateNode(bg, &datastore.AttestedNode{SPIFFEID: "spiffe://example.org/n", AttestationType: "join_token", CertSerial: "1", CertNotAfter: t0.Unix() + 600}); err != nil {
		t.Fatal(err)
	}
	c.wait(t, datastore.ChangeNodes)

	// Kill the listener's connection: it comes back by itself.
	if _, err := other.w.ExecContext(bg, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'sigil-server-listener' AND datname = current_database()"); err != nil {
		t.Fatal(err)
	}
	c.wait(t, datastore.ChangeAll)
	if _, err := other.AppendBundle(bg, &datastore.Bundle{TrustDomain: "example.org", JWTKeys: []datastore.JWTKey{{KeyID: "k", PublicKey: []byte{1}}}}); err != nil {
		t.Fatal(err)
	}
	c.wait(t, datastore.ChangeBundles)
}
