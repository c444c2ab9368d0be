package e2e

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/bench/internal/stack"
)

const (
	entriesPerOp = 10_000
	entryBatch   = 50
)

// BenchmarkBatchCreateEntry creates 10,000 new entries per op through
// BatchCreateEntry over the admin socket, 50 per call, and reports
// entries/s. "seq" is one caller sending batch after batch (what
// `entry create -data` or a controller does); "par=4" is four callers.
// Each op adds 10,000 entries to the same SQLite store, so later ops see
// a bigger table, as a growing deployment would.
func BenchmarkBatchCreateEntry(b *testing.B) {
	b.Run("seq", func(b *testing.B) { benchCreate(b, 1) })
	b.Run("par=4", func(b *testing.B) { benchCreate(b, 4) })
}

func benchCreate(b *testing.B, callers int) {
	srv := stack.StartServer(b)
	_, agentID := srv.JoinToken(b)
	seq := 0
	// Typical workload entries: two selectors, one DNS name.
	batches := func() [][]*types.Entry {
		out := make([][]*types.Entry, 0, entriesPerOp/entryBatch)
		for start := 0; start < entriesPerOp; start += entryBatch {
			batch := make([]*types.Entry, entryBatch)
			for j := range batch {
				seq++
				id := spiffeid.RequireFromSegments(stack.TrustDomain, "ns", fmt.Sprint(seq%100), "sa", fmt.Sprint(seq))
				e := stack.Entry(agentID, id, fmt.Sprintf("uid:%d", 10000+seq))
				e.Selectors = append(e.Selectors, &types.Selector{Type: "unix", Value: fmt.Sprintf("gid:%d", seq%50)})
				e.DnsNames = []string{fmt.Sprintf("svc-%d.example.org", seq)}
				batch[j] = e
			}
			out = append(out, batch)
		}
		return out
	}
	cpu := int64(0)
	for b.Loop() {
		b.StopTimer()
		work := batches()
		ch := make(chan []*types.Entry, len(work))
		for _, w := range work {
			ch <- w
		}
		close(ch)
		cpu0 := stack.CPUTime()
		b.StartTimer()
		var wg sync.WaitGroup
		errs := make(chan error, callers)
		for range callers {
			wg.Go(func() {
				for batch := range ch {
					if _, err := srv.Client.CreateEntries(context.Background(), batch...); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		b.StopTimer()
		cpu += int64(stack.CPUTime() - cpu0)
		select {
		case err := <-errs:
			b.Fatal(err)
		default:
		}
		b.StartTimer()
	}
	n := float64(b.N) * entriesPerOp
	b.ReportMetric(n/b.Elapsed().Seconds(), "entries/s")
	b.ReportMetric(float64(cpu)/1e3/n, "cpu-us/entry")
}
