package workloadattest_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/agent/workloadattest"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// fixed returns its selectors (or its error).
type fixed struct {
	sels []selector.Selector
	err  error
}

func (f fixed) Attest(context.Context, int32) ([]selector.Selector, error) { return f.sels, f.err }

// stuck answers only when its context is done, and reports that context's
// error.
type stuck struct{ sawCtxErr chan error }

func (s stuck) Attest(ctx context.Context, _ int32) ([]selector.Selector, error) {
	<-ctx.Done()
	s.sawCtxErr <- ctx.Err()
	return nil, ctx.Err()
}

// deaf ignores its context: it answers when the test releases it.
type deaf struct{ release chan struct{} }

func (d deaf) Attest(context.Context, int32) ([]selector.Selector, error) {
	<-d.release
	return []selector.Selector{{Type: "deaf", Value: "late"}}, nil
}

// barrier succeeds only once every plugin sharing it has started: run one
// after the other, they would wait until the deadline.
type barrier struct {
	wg   *sync.WaitGroup
	done chan struct{}
	sel  selector.Selector
}

func (b barrier) Attest(ctx context.Context, _ int32) ([]selector.Selector, error) {
	b.wg.Done()
	select {
	case <-b.done:
		return []selector.Selector{b.sel}, nil
	case <-ctx.Done():
		return nil, errors.New("the other plugins never started")
	}
}

func sel(t, v string) selector.Selector { return selector.Selector{Type: t, Value: v} }

func newSet(t *testing.T, timeout time.Duration, plugins ...workloadattest.Plugin) (*workloadattest.Set, *bytes.Buffer) {
	t.Helper()
	var logs bytes.Buffer
	s, err := workloadattest.New(workloadattest.Config{Plugins: plugins, Timeout: timeout, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return s, &logs
}

func TestMergesInPluginOrder(t *testing.T) {
	s, logs := newSet(t, 0,
		workloadattest.Plugin{Name: "unix", Attestor: fixed{sels: []selector.Selector{sel("unix", "uid:1"), sel("unix", "gid:2")}}},
		workloadattest.Plugin{Name: "other", Attestor: fixed{sels: []selector.Selector{sel("other", "x")}}},
	)
	got, err := s.Attest(context.Background(), 42)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint([]selector.Selector{sel("unix", "uid:1"), sel("unix", "gid:2"), sel("other", "x")}) {
		t.Errorf("selectors %v", got)
	}
	if logs.Len() != 0 {
		t.Errorf("logged %s", logs)
	}
}

// TestPluginsRunConcurrently: each plugin waits for all to have started,
// which only succeeds when they run at once.
func TestPluginsRunConcurrently(t *testing.T) {
	var wg sync.WaitGroup
	wg.Add(3)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	var plugins []workloadattest.Plugin
	for _, n := range []string{"a", "b", "c"} {
		plugins = append(plugins, workloadattest.Plugin{Name: n, Attestor: barrier{wg: &wg, done: done, sel: sel(n, "1")}})
	}
	// A generous deadline: reached only if the plugins ran one by one.
	s, logs := newSet(t, time.Minute, plugins...)
	got, err := s.Attest(context.Background(), 1)
	if err != nil || len(got) != 3 {
		t.Fatalf("Attest = %v, %v; log: %s", got, err, logs)
	}
}

// TestSlowPluginTimesOut: a plugin that misses the deadline is cancelled,
// named in the log and dropped; the others' selectors are returned.
func TestSlowPluginTimesOut(t *testing.T) {
	slow := stuck{sawCtxErr: make(chan error, 1)}
	s, logs := newSet(t, 50*time.Millisecond,
		workloadattest.Plugin{Name: "unix", Attestor: fixed{sels: []selector.Selector{sel("unix", "uid:1")}}},
		workloadattest.Plugin{Name: "k8s", Attestor: slow},
	)
	got, err := s.Attest(context.Background(), 7)
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}
	if len(got) != 1 || got[0] != sel("unix", "uid:1") {
		t.Errorf("selectors %v, want the fast plugin's", got)
	}
	if err := <-slow.sawCtxErr; !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("the slow plugin's context ended with %v, want the deadline", err)
	}
	if l := logs.String(); !strings.Contains(l, "attestor=k8s") || !strings.Contains(l, "pid=7") || strings.Contains(l, "attestor=unix") {
		t.Errorf("log does not name the slow plugin (only): %s", l)
	}
}

// TestDeafPluginDoesNotHoldTheCall: a plugin ignoring its context does not
// hold the call past the deadline; its late answer is dropped.
func TestDeafPluginDoesNotHoldTheCall(t *testing.T) {
	d := deaf{release: make(chan struct{})}
	defer close(d.release)
	s, logs := newSet(t, 50*time.Millisecond,
		workloadattest.Plugin{Name: "deaf", Attestor: d},
		workloadattest.Plugin{Name: "unix", Attestor: fixed{sels: []selector.Selector{sel("unix", "uid:1")}}},
	)
	got, err := s.Attest(context.Background(), 7)
	if err != nil || len(got) != 1 {
		t.Fatalf("Attest = %v, %v", got, err)
	}
	if !strings.Contains(logs.String(), `msg="Workload attestor timed out" attestor=deaf`) {
		t.Errorf("log: %s", logs)
	}
}

// TestAllFail: the error names every plugin, by name, and how it failed;
// the plugins' own errors are wrapped (and logged), not in the text.
func TestAllFail(t *testing.T) {
	boom := errors.New("read /proc/7/status: no such process")
	s, logs := newSet(t, 50*time.Millisecond,
		workloadattest.Plugin{Name: "unix", Attestor: fixed{err: boom}},
		workloadattest.Plugin{Name: "k8s", Attestor: stuck{sawCtxErr: make(chan error, 1)}},
	)
	_, err := s.Attest(context.Background(), 7)
	var e *workloadattest.Error
	if !errors.As(err, &e) {
		t.Fatalf("Attest error %v is not an *Error", err)
	}
	if got, want := err.Error(), `workload attestation failed: WorkloadAttestor "unix" failed, WorkloadAttestor "k8s" timed out`; got != want {
		t.Errorf("error %q, want %q", got, want)
	}
	if !errors.Is(err, boom) {
		t.Error("the plugin's error is not wrapped")
	}
	if !strings.Contains(logs.String(), "no such process") {
		t.Errorf("the plugin's error is not logged: %s", logs)
	}
}

// TestCallerGone: a cancelled caller gets its context's error, nothing is
// blamed on the plugins.
func TestCallerGone(t *testing.T) {
	s, logs := newSet(t, time.Minute, workloadattest.Plugin{Name: "k8s", Attestor: stuck{sawCtxErr: make(chan error, 1)}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.Attest(ctx, 7)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Attest error %v, want context.Canceled", err)
	}
	if logs.Len() != 0 {
		t.Errorf("logged %s", logs)
	}
}

func TestNewValidates(t *testing.T) {
	ok := fixed{}
	for _, tc := range []struct {
		name string
		cfg  workloadattest.Config
		want string
	}{
		{"none", workloadattest.Config{}, "at least one WorkloadAttestor"},
		{"unnamed", workloadattest.Config{Plugins: []workloadattest.Plugin{{Attestor: ok}}}, "has no name"},
		{"nil", workloadattest.Config{Plugins: []workloadattest.Plugin{{Name: "unix"}}}, `"unix" has no attestor`},
		{"twice", workloadattest.Config{Plugins: []workloadattest.Plugin{{Name: "unix", Attestor: ok}, {Name: "unix", Attestor: ok}}}, `"unix" is configured twice`},
		{"negative timeout", workloadattest.Config{Plugins: []workloadattest.Plugin{{Name: "unix", Attestor: ok}}, Timeout: -1}, "negative timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := workloadattest.New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New error %v, want %q", err, tc.want)
			}
		})
	}
}

// BenchmarkAttest is the cost of running the plugins concurrently under a
// deadline, against calling the one plugin directly (the Workload API's
// cost per call before the Set).
func BenchmarkAttest(b *testing.B) {
	p := fixed{sels: []selector.Selector{sel("unix", "uid:1"), sel("unix", "gid:1")}}
	b.Run("direct", func(b *testing.B) {
		for b.Loop() {
			if _, err := p.Attest(context.Background(), 1); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, n := range []int{1, 3} {
		var plugins []workloadattest.Plugin
		for i := range n {
			plugins = append(plugins, workloadattest.Plugin{Name: fmt.Sprint("p", i), Attestor: p})
		}
		s, err := workloadattest.New(workloadattest.Config{Plugins: plugins})
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("set of %d", n), func(b *testing.B) {
			for b.Loop() {
				if _, err := s.Attest(context.Background(), 1); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
