package jointoken_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/attest/node/jointoken"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/datastore/sqlstore"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func setup(t *testing.T) (*sqlstore.Store, *clock.Fake, *jointoken.Attestor) {
	t.Helper()
	ds, err := sqlstore.Open(context.Background(), sqlstore.Config{DatabaseType: "sqlite3", ConnectionString: filepath.Join(t.TempDir(), "ds.sqlite3")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ds.Close() })
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	a, err := jointoken.New(jointoken.Config{TrustDomain: td, Tokens: ds, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	return ds, clk, a
}

func store(t *testing.T, ds *sqlstore.Store, token string, expires time.Time) {
	t.Helper()
	if err := ds.CreateJoinToken(context.Background(), &datastore.JoinToken{Hash: jointoken.Hash(token), ExpiresAt: expires.Unix()}); err != nil {
		t.Fatal(err)
	}
}

func TestCheckDoesNotConsume(t *testing.T) {
	ds, clk, a := setup(t)
	ctx := context.Background()
	tok, err := jointoken.Generate()
	if err != nil {
		t.Fatal(err)
	}
	store(t, ds, tok, clk.Now().Add(time.Minute))

	for range 2 { // checking twice: nothing is consumed
		cred, err := a.Check(ctx, []byte(tok))
		if err != nil {
			t.Fatal(err)
		}
		if want := "spiffe://example.org/spire/agent/join_token/" + tok; cred.AgentID.String() != want {
			t.Fatalf("id = %s, want %s", cred.AgentID, want)
		}
		if cred.Hash != jointoken.Hash(tok) || cred.ValidAt != clk.Now().Unix() {
			t.Fatalf("credential = %+v", cred)
		}
	}
	// Consumed by the transaction that records the node; then unknown.
	cred, _ := a.Check(ctx, []byte(tok))
	if _, err := ds.AttestNode(ctx, &datastore.NodeAttestation{JoinToken: &cred.Hash, ValidAt: cred.ValidAt,
		Node: &datastore.AttestedNode{SPIFFEID: cred.AgentID.String(), AttestationType: jointoken.Type, CertSerial: "1"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Check(ctx, []byte(tok)); !errors.Is(err, jointoken.ErrUnknownToken) {
		t.Fatalf("after use: %v, want ErrUnknownToken", err)
	}
}

func TestCheckExpiredAndUnknown(t *testing.T) {
	ds, clk, a := setup(t)
	ctx := context.Background()
	store(t, ds, "tok-expiring", clk.Now().Add(time.Minute))
	clk.Add(time.Minute)
	if _, err := a.Check(ctx, []byte("tok-expiring")); !errors.Is(err, jointoken.ErrExpiredToken) {
		t.Fatalf("expired: %v", err)
	}
	if _, err := a.Check(ctx, []byte("tok-expiring")); !errors.Is(err, jointoken.ErrUnknownToken) {
		t.Fatalf("expired token not deleted: %v", err)
	}
	for _, bad := range []string{"", "nope", "a/b", "..", strings.Repeat("x", jointoken.MaxTokenLen+1), "sp ace"} {
		if _, err := a.Check(ctx, []byte(bad)); !errors.Is(err, jointoken.ErrUnknownToken) {
			t.Errorf("%q: %v, want ErrUnknownToken", bad, err)
		}
	}
}

func TestGenerate(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		tok, err := jointoken.Generate()
		if err != nil {
			t.Fatal(err)
		}
		if len(tok) != 36 || seen[tok] {
			t.Fatalf("token %q: bad length or repeated", tok)
		}
		if err := jointoken.ValidateToken(tok); err != nil {
			t.Fatal(err)
		}
		seen[tok] = true
	}
}
