package workloadattest_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/agent/workloadattest"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

type attestorCall struct {
	plugin string
	failed bool
}

type recordMetrics struct {
	mu    sync.Mutex
	calls []attestorCall
	done  chan struct{}
}

func (r *recordMetrics) WorkloadAttestorDone(plugin string, _ time.Duration, err error) {
	r.mu.Lock()
	r.calls = append(r.calls, attestorCall{plugin, err != nil})
	r.mu.Unlock()
	r.done <- struct{}{}
}

// Every plugin's answer is reported by its name, failures included, also a
// late one (after the call's deadline).
func TestAttestorMetrics(t *testing.T) {
	m := &recordMetrics{done: make(chan struct{}, 3)}
	late := deaf{release: make(chan struct{})}
	set, err := workloadattest.New(workloadattest.Config{
		Plugins: []workloadattest.Plugin{
			{Name: "ok", Attestor: fixed{sels: []selector.Selector{{Type: "unix", Value: "uid:1"}}}},
			{Name: "bad", Attestor: fixed{err: errors.New("boom")}},
			{Name: "late", Attestor: late},
		},
		Timeout: 50 * time.Millisecond,
		Metrics: m,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := set.Attest(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	close(late.release)
	for range 3 {
		<-m.done
	}
	got := map[string]bool{}
	for _, c := range m.calls {
		got[c.plugin] = c.failed
	}
	if len(m.calls) != 3 || got["ok"] || !got["bad"] || got["late"] {
		t.Fatalf("reported %v, want ok and late succeeded, bad failed", m.calls)
	}
}
