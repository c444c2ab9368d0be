package ca_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sigil-spiffe/sigil/internal/ca"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/keys"
)

// claim runs ca.ClaimJournal for a server with key manager km on store.
func claim(t *testing.T, store *memStore, km keys.Manager, clk *clock.Fake, tdom spiffeid.TrustDomain) (string, error) {
	t.Helper()
	return ca.ClaimJournal(context.Background(), ca.Config{TrustDomain: tdom, Keys: km, Journal: store, Bundles: store, Clock: clk, Log: quietLog()}, store)
}

func journalName(name string) opt { return func(c *ca.Config) { c.JournalName = name } }

// TestClaimJournal: a server of an earlier Sigil (journal "ca", its keys
// in its key manager) keeps its journal; a second server with its own keys
// gets a new name and leaves the first journal alone; a server whose keys
// sign none of the journals gets a new name every time.
func TestClaimJournal(t *testing.T) {
	store := newMemStore()
	clk := clock.NewFake(time.Now())

	kmA := keys.NewMemory()
	if name, err := claim(t, store, kmA, clk, td); err != nil || !strings.HasPrefix(name, "ca-") {
		t.Fatalf("claim on an empty database = %q, %v; want a new ca-... name", name, err)
	}
	newEnv(t, store, kmA, clk) // single server of an earlier Sigil: journal "ca"
	if name, err := claim(t, store, kmA, clk, td); err != nil || name != ca.DefaultJournalName {
		t.Fatalf("claim by the owner of journal %q = %q, %v", ca.DefaultJournalName, name, err)
	}

	kmB := keys.NewMemory()
	nameB, err := claim(t, store, kmB, clk, td)
	if err != nil || !strings.HasPrefix(nameB, "ca-") {
		t.Fatalf("claim by a second server = %q, %v", nameB, err)
	}
	before, _ := store.GetCAJournal(context.Background(), ca.DefaultJournalName)
	newEnv(t, store, kmB, clk, journalName(nameB))
	after, _ := store.GetCAJournal(context.Background(), ca.DefaultJournalName)
	if !bytes.Equal(before, after) {
		t.Fatal("the second server rewrote the first server's journal")
	}
	if name, err := claim(t, store, kmB, clk, td); err != nil || name != nameB {
		t.Fatalf("claim by the second server again = %q, %v; want %q", name, err, nameB)
	}
	if name, err := claim(t, store, keys.NewMemory(), clk, td); err != nil || name == nameB || name == ca.DefaultJournalName {
		t.Fatalf("claim by a third server = %q, %v", name, err)
	}

	// Any journal of another trust domain ties the database to it.
	other := spiffeid.RequireTrustDomainFromString("other.org")
	_, err = claim(t, store, keys.NewMemory(), clk, other)
	var mismatch *ca.TrustDomainMismatchError
	if !errors.As(err, &mismatch) || mismatch.Journal != td || mismatch.Configured != other {
		t.Fatalf("claim for another trust domain: %v, want a TrustDomainMismatchError", err)
	}
}

// TestServersShareOneBundle: two servers on one store, each with its own
// keys and journal, through a whole CA lifetime and more: every X509-SVID
// and JWT-SVID either signs verifies with the one stored bundle, and
// neither server's prepared authority ever signs before it is in that
// bundle.
func TestServersShareOneBundle(t *testing.T) {
	store := newMemStore()
	clk := clock.NewFake(time.Now())
	a := newEnv(t, store, keys.NewMemory(), clk, journalName("ca-a"))
	clk.Add(7 * time.Hour) // the servers' CAs rotate at different times
	b := newEnv(t, store, keys.NewMemory(), clk, journalName("ca-b"))
	if _, err := store.GetCAJournal(context.Background(), "ca-a"); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		for name, e := range map[string]*env{"a": a, "b": b} {
			chain := e.sign(t, ca.X509SVIDParams{})
			bundle := a.x509Bundle(t) // the one stored bundle
			if _, _, err := x509svid.Verify(chain, bundle, x509svid.WithTime(clk.Now())); err != nil {
				t.Fatalf("%s: server %s's X509-SVID does not verify with the stored bundle: %v", when, name, err)
			}
			tok, err := e.m.SignJWTSVID(context.Background(), ca.JWTSVIDParams{SPIFFEID: workload, Audience: []string{"aud"}})
			if err != nil {
				t.Fatal(err)
			}
			parseJWT(t, tok, a.jwtBundle(t), "aud", clk.Now()) // the one stored bundle
		}
	}
	check("start")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	for _, e := range []*env{a, b} {
		go func() { done <- e.m.Run(ctx) }()
	}
	defer func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("Run returned %v on cancel", err)
			}
		}
	}()
	armed := func() {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for clk.Waiters() < 2 {
			if time.Now().After(deadline) {
				t.Fatal("the rotation loops did not re-arm their timers")
			}
			time.Sleep(time.Millisecond)
		}
	}
	armed()
	for step := range 2 * 24 * 4 { // two CA lifetimes, every 15 minutes
		clk.Add(15 * time.Minute)
		armed()
		check("after " + (time.Duration(step+1) * 15 * time.Minute).String())
	}
	if n := len(a.storedBundle(t).X509Authorities); n < 2 || n > 4 {
		t.Errorf("%d X.509 authorities in the bundle; want both servers' live ones (2 to 4)", n)
	}
}
