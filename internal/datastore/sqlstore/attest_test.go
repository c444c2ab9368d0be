package sqlstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/datastore"
)

func (x suite) TestAttestNode(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	hash := sha256.Sum256([]byte("token"))
	if err := s.CreateJoinToken(ctx, &datastore.JoinToken{Hash: hash, ExpiresAt: t0.Unix() + 60}); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetJoinToken(ctx, hash)
	if err != nil || got.ExpiresAt != t0.Unix()+60 {
		t.Fatalf("GetJoinToken: %+v, %v", got, err)
	}
	if _, err := s.GetJoinToken(ctx, sha256.Sum256([]byte("other"))); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("GetJoinToken of an unknown token: %v", err)
	}

	id := "spiffe://td/spire/agent/join_token/token"
	if err := s.SetNodeSelectors(ctx, id, sels("pre:set")); err != nil {
		t.Fatal(err)
	}
	// A token that expired by ValidAt is not consumed and records nothing.
	_, err = s.AttestNode(ctx, &datastore.NodeAttestation{JoinToken: &hash, ValidAt: t0.Unix() + 60,
		Node: &datastore.AttestedNode{SPIFFEID: id, AttestationType: "join_token", CertSerial: "1"}})
	if !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("expired token: %v, want ErrNotFound", err)
	}
	if _, err := s.GetNode(ctx, id); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("node recorded with an expired token: %v", err)
	}

	n, err := s.AttestNode(ctx, &datastore.NodeAttestation{JoinToken: &hash, ValidAt: t0.Unix(),
		Node: &datastore.AttestedNode{SPIFFEID: id, AttestationType: "join_token", CertSerial: "1", CertNotAfter: 100}})
	if err != nil {
		t.Fatal(err)
	}
	if n.CertSerial != "1" || n.CreatedAt != t0.Unix() || !reflect.DeepEqual(n.Selectors, sels("pre:set")) {
		t.Fatalf("created node %+v (selectors set earlier must be kept)", n)
	}
	if _, err := s.GetJoinToken(ctx, hash); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("token not consumed: %v", err)
	}
	// Used once: the second use records nothing.
	_, err = s.AttestNode(ctx, &datastore.NodeAttestation{JoinToken: &hash, ValidAt: t0.Unix(),
		Node: &datastore.AttestedNode{SPIFFEID: id, CertSerial: "2"}})
	if !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("reused token: %v, want ErrNotFound", err)
	}

	// Re-attestation (no token) replaces serials, pending serial and selectors.
	if _, err := s.UpdateNode(ctx, &datastore.AttestedNode{SPIFFEID: id, NewCertSerial: "9", NewCertNotAfter: 9}, &datastore.NodeMask{NewCertSerial: true, NewCertNotAfter: true}); err != nil {
		t.Fatal(err)
	}
	before, _ := s.LastNodeEventID(ctx)
	n, err = s.AttestNode(ctx, &datastore.NodeAttestation{Node: &datastore.AttestedNode{SPIFFEID: id, AttestationType: "x509pop",
		CertSerial: "3", CertNotAfter: 300, CanReattest: true, Selectors: sels("a:b")}})
	if err != nil {
		t.Fatal(err)
	}
	stored, _ := s.GetNode(ctx, id)
	for _, x := range []*datastore.AttestedNode{n, stored} {
		if x.CertSerial != "3" || x.CertNotAfter != 300 || x.NewCertSerial != "" || x.NewCertNotAfter != 0 || !x.CanReattest ||
			x.AttestationType != "join_token" || x.CreatedAt != t0.Unix() || !reflect.DeepEqual(x.Selectors, sels("a:b")) {
			t.Fatalf("re-attested node %+v", x)
		}
	}
	if after, _ := s.LastNodeEventID(ctx); after != before+1 {
		t.Fatalf("node events %d -> %d, want one more", before, after)
	}

	// A banned node stays banned, and the token it came with is kept.
	if _, err := s.UpdateNode(ctx, &datastore.AttestedNode{SPIFFEID: id}, &datastore.NodeMask{CertSerial: true, NewCertSerial: true}); err != nil {
		t.Fatal(err)
	}
	hash2 := sha256.Sum256([]byte("token2"))
	if err := s.CreateJoinToken(ctx, &datastore.JoinToken{Hash: hash2, ExpiresAt: t0.Unix() + 60}); err != nil {
		t.Fatal(err)
	}
	_, err = s.AttestNode(ctx, &datastore.NodeAttestation{JoinToken: &hash2, ValidAt: t0.Unix(),
		Node: &datastore.AttestedNode{SPIFFEID: id, CertSerial: "4"}})
	if !errors.Is(err, datastore.ErrBanned) {
		t.Fatalf("banned node: %v, want ErrBanned", err)
	}
	if stored, _ := s.GetNode(ctx, id); !stored.Banned() {
		t.Fatalf("banned node changed: %+v", stored)
	}
	if _, err := s.GetJoinToken(ctx, hash2); err != nil {
		t.Fatalf("token consumed by a refused attestation: %v", err)
	}
}

// A failure inside the transaction, after the token was deleted, leaves
// the token in place and no node behind.
func (x suite) TestAttestNodeIsOneTransaction(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	hash := sha256.Sum256([]byte("token"))
	if err := s.CreateJoinToken(ctx, &datastore.JoinToken{Hash: hash, ExpiresAt: t0.Unix() + 60}); err != nil {
		t.Fatal(err)
	}
	// Fail the last statement of the transaction (the node event).
	f.exec(t, f.b.failInserts("node_events"))
	a := &datastore.NodeAttestation{JoinToken: &hash, ValidAt: t0.Unix(),
		Node: &datastore.AttestedNode{SPIFFEID: "spiffe://td/a", AttestationType: "join_token", CertSerial: "1", Selectors: sels("a:b")}}
	if _, err := s.AttestNode(ctx, a); err == nil {
		t.Fatal("AttestNode succeeded despite the failing journal insert")
	}
	if _, err := s.GetJoinToken(ctx, hash); err != nil {
		t.Fatalf("token gone after a failed transaction: %v", err)
	}
	if _, err := s.GetNode(ctx, "spiffe://td/a"); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("node left by a failed transaction: %v", err)
	}
	if got, err := s.nodeSelectors(ctx, s.r, "spiffe://td/a"); err != nil || len(got) != 0 {
		t.Fatalf("selectors left by a failed transaction: %v, %v", got, err)
	}
	f.exec(t, f.b.unfail("node_events"))
	if _, err := s.AttestNode(ctx, a); err != nil {
		t.Fatalf("after the failure cleared: %v", err)
	}
	// Committed means durable: a reopened store has the node, not the token.
	f.reopen(t)
	if _, err := f.store.GetNode(ctx, "spiffe://td/a"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.GetJoinToken(ctx, hash); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("token survived its use: %v", err)
	}
}

func (x suite) TestAttestNodeTokenUsedOnce(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	hash := sha256.Sum256([]byte("token"))
	if err := s.CreateJoinToken(ctx, &datastore.JoinToken{Hash: hash, ExpiresAt: t0.Unix() + 60}); err != nil {
		t.Fatal(err)
	}
	var ok atomic.Int32
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			_, err := s.AttestNode(ctx, &datastore.NodeAttestation{JoinToken: &hash, ValidAt: t0.Unix(),
				Node: &datastore.AttestedNode{SPIFFEID: "spiffe://td/a", AttestationType: "join_token", CertSerial: string(rune('a' + i))}})
			switch {
			case err == nil:
				ok.Add(1)
			case !errors.Is(err, datastore.ErrNotFound):
				t.Errorf("losing use: %v", err)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 1 {
		t.Fatalf("%d uses of one token succeeded", ok.Load())
	}
}

// TestAttestNodeMustBeNew: an attestation that may not re-attest records
// nothing, and consumes no token, for a node already on record.
func (x suite) TestAttestNodeMustBeNew(t *testing.T) {
	f := x.newFixture(t)
	s, ctx := f.store, context.Background()
	id := "spiffe://td/spire/agent/tofu/a"
	if _, err := s.AttestNode(ctx, &datastore.NodeAttestation{MustBeNew: true,
		Node: &datastore.AttestedNode{SPIFFEID: id, AttestationType: "tofu", CertSerial: "1", Selectors: sels("tofu:a")}}); err != nil {
		t.Fatal(err)
	}
	hash := sha256.Sum256([]byte("token"))
	if err := s.CreateJoinToken(ctx, &datastore.JoinToken{Hash: hash, ExpiresAt: t0.Unix() + 60}); err != nil {
		t.Fatal(err)
	}
	_, err := s.AttestNode(ctx, &datastore.NodeAttestation{MustBeNew: true, JoinToken: &hash, ValidAt: t0.Unix(),
		Node: &datastore.AttestedNode{SPIFFEID: id, AttestationType: "tofu", CertSerial: "2", Selectors: sels("tofu:b")}})
	if !errors.Is(err, datastore.ErrAlreadyExists) {
		t.Fatalf("second attestation: %v, want ErrAlreadyExists", err)
	}
	n, err := s.GetNode(ctx, id)
	if err != nil || n.CertSerial != "1" || !reflect.DeepEqual(n.Selectors, sels("tofu:a")) {
		t.Fatalf("node changed: %+v, %v", n, err)
	}
	if _, err := s.GetJoinToken(ctx, hash); err != nil {
		t.Fatalf("token consumed by a refused attestation: %v", err)
	}
	// Without MustBeNew the node attests again.
	if _, err := s.AttestNode(ctx, &datastore.NodeAttestation{
		Node: &datastore.AttestedNode{SPIFFEID: id, CertSerial: "3", CanReattest: true}}); err != nil {
		t.Fatal(err)
	}
}
