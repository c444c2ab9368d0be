// Package datastore_test benchmarks the SQL datastore on real SQLite files
// and, in BenchmarkBackends, on a real PostgreSQL (pgtest: a private
// cluster with PostgreSQL's durable defaults).
//
//	go test ./bench/datastore -run '^$' -bench . -benchtime 10000x
package datastore_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/datastore/sqlstore"
	"github.com/sigil-spiffe/sigil/internal/selector"
	"github.com/sigil-spiffe/sigil/internal/testutil/pgtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if pg.c != nil {
		if err := pg.c.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
	os.Exit(code)
}

func openStore(b *testing.B) *sqlstore.Store { return openStoreSync(b, "") }

// openBackend opens a store on a new SQLite file or PostgreSQL database.
func openBackend(b *testing.B, backend string) *sqlstore.Store {
	b.Helper()
	if backend == "sqlite" {
		return openStore(b)
	}
	pg.once.Do(func() { pg.c, pg.err = pgtest.StartCluster(pgtest.Options{Durable: true}) })
	if pg.err != nil {
		b.Fatal(pg.err)
	}
	s, err := sqlstore.Open(context.Background(), sqlstore.Config{DatabaseType: "postgres", ConnectionString: pg.c.NewDatabase(b)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// pg is the durable cluster BenchmarkBackends shares (stopped with the
// process: the postmaster dies with it).
var pg struct {
	once sync.Once
	c    *pgtest.Cluster
	err  error
}

// BenchmarkBackends runs the store's hot writes on SQLite
// (synchronous=FULL) and PostgreSQL (fsync, synchronous_commit on), each
// iteration one entry or one attestation:
//
//	go test ./bench/datastore -run '^$' -bench Backends -benchtime 5000x
func BenchmarkBackends(b *testing.B) {
	for _, backend := range []string{"sqlite", "postgres"} {
		b.Run(backend+"/create-batch50", func(b *testing.B) { createEntries(b, openBackend(b, backend), 50) })
		b.Run(backend+"/create-batch1", func(b *testing.B) { createEntries(b, openBackend(b, backend), 1) })
		b.Run(backend+"/attest", func(b *testing.B) { attestNodes(b, openBackend(b, backend)) })
	}
}

// attestNodes records b.N join-token attestations (token created first,
// untimed; AttestNode consumes it and creates the node with a selector).
func attestNodes(b *testing.B, s *sqlstore.Store) {
	ctx := context.Background()
	hashes := make([][32]byte, b.N)
	for i := range hashes {
		hashes[i] = sha256.Sum256(fmt.Append(nil, "token", i))
		if err := s.CreateJoinToken(ctx, &datastore.JoinToken{Hash: hashes[i], ExpiresAt: 1 << 40}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := range b.N {
		id := fmt.Sprintf("spiffe://example.org/spire/agent/join_token/%d", i)
		if _, err := s.AttestNode(ctx, &datastore.NodeAttestation{JoinToken: &hashes[i], ValidAt: 1, MustBeNew: true,
			Node: &datastore.AttestedNode{SPIFFEID: id, AttestationType: "join_token", CertSerial: fmt.Sprint(i), CertNotAfter: 1 << 40,
				Selectors: []selector.Selector{{Type: "join_token", Value: fmt.Sprint(i)}}}}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "attestations/s")
}

// openStoreSync opens a store with the given synchronous mode ("" = the
// default, full).
func openStoreSync(b *testing.B, sync string) *sqlstore.Store {
	b.Helper()
	s, err := sqlstore.Open(context.Background(), sqlstore.Config{
		DatabaseType:     "sqlite3",
		ConnectionString: filepath.Join(b.TempDir(), "datastore.sqlite3"),
		Synchronous:      sync,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// newEntry returns a typical workload entry: two selectors, one DNS name.
func newEntry(i int) *datastore.Entry {
	return &datastore.Entry{
		SPIFFEID: fmt.Sprintf("spiffe://example.org/ns/default/sa/workload-%d", i),
		ParentID: fmt.Sprintf("spiffe://example.org/spire/agent/k8s_psat/node-%d", i%100),
		Selectors: []selector.Selector{
			{Type: "k8s", Value: "ns:default"},
			{Type: "k8s", Value: fmt.Sprintf("sa:workload-%d", i)},
		},
		DNSNames:    []string{fmt.Sprintf("workload-%d.default.svc", i)},
		X509SVIDTTL: 3600,
	}
}

// BenchmarkCreateEntriesBatch50 creates b.N entries in batches of 50 (as
// BatchCreateEntry does) and reports entries/s. Each iteration is one entry.
func BenchmarkCreateEntriesBatch50(b *testing.B) { createEntries(b, openStore(b), 50) }

// BenchmarkCreateEntriesSync is BenchmarkCreateEntriesBatch50 and the same
// with one entry per transaction (one commit, hence one WAL fsync under
// synchronous=FULL, per entry), in both synchronous modes:
//
//	go test ./bench/datastore -run '^$' -bench 'CreateEntriesSync/batch=1/full' -benchtime 2000x
func BenchmarkCreateEntriesSync(b *testing.B) {
	for _, batch := range []int{1, 50} {
		for _, sync := range []string{sqlstore.SynchronousFull, sqlstore.SynchronousNormal} {
			b.Run(fmt.Sprintf("batch=%d/%s", batch, sync), func(b *testing.B) {
				createEntries(b, openStoreSync(b, sync), batch)
			})
		}
	}
}

func createEntries(b *testing.B, s *sqlstore.Store, batch int) {
	ctx := context.Background()
	entries := make([]*datastore.Entry, b.N)
	for i := range entries {
		entries[i] = newEntry(i)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i += batch {
		res, err := s.CreateEntries(ctx, entries[i:min(i+batch, b.N)])
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range res {
			if r.Err != nil {
				b.Fatal(r.Err)
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
}

// BenchmarkListEntriesByParent measures the agent-sync style query on a
// store of 10,000 entries (100 per parent).
func BenchmarkListEntriesByParent(b *testing.B) {
	s := openStore(b)
	ctx := context.Background()
	for i := 0; i < 10000; i += 500 {
		var es []*datastore.Entry
		for j := i; j < i+500; j++ {
			es = append(es, newEntry(j))
		}
		if _, err := s.CreateEntries(ctx, es); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		es, _, err := s.ListEntries(ctx, datastore.EntryFilter{
			ByParentID: fmt.Sprintf("spiffe://example.org/spire/agent/k8s_psat/node-%d", i%100),
		}, datastore.Page{})
		if err != nil || len(es) != 100 {
			b.Fatalf("got %d entries, %v", len(es), err)
		}
	}
}
