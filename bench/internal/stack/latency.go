package stack

import (
	"slices"
	"testing"
	"time"
)

// Latencies records per-operation durations so a benchmark can report
// percentiles (b.ReportMetric) besides the mean that ns/op gives.
type Latencies struct {
	d []time.Duration
}

// Add records one operation.
func (l *Latencies) Add(d time.Duration) { l.d = append(l.d, d) }

// Len is the number of recorded operations.
func (l *Latencies) Len() int { return len(l.d) }

// Percentile returns the p-th percentile (0 < p <= 100, nearest rank).
func (l *Latencies) Percentile(p float64) time.Duration {
	if len(l.d) == 0 {
		return 0
	}
	s := slices.Clone(l.d)
	slices.Sort(s)
	rank := int(p/100*float64(len(s))+0.999999) - 1
	rank = max(0, min(rank, len(s)-1))
	return s[rank]
}

// Report adds p50-ms and p99-ms (and max-ms) metrics to b.
func (l *Latencies) Report(b *testing.B) {
	if len(l.d) == 0 {
		return
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(l.Percentile(50)), "p50-ms")
	b.ReportMetric(ms(l.Percentile(99)), "p99-ms")
	b.ReportMetric(ms(slices.Max(l.d)), "max-ms")
}
