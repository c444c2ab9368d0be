// Package workloadattest runs the agent's workload attestors for one
// caller: every configured WorkloadAttestor plugin at once, under one
// deadline per call, with their selectors merged.
//
// A plugin that fails or misses the deadline contributes no selectors and
// is logged (WARN) by its plugin name, e.g. WorkloadAttestor "unix"; the
// call still succeeds with the selectors of the others, as in SPIRE. Only
// when every plugin failed does Attest fail, with an *Error naming each
// one. Missing selectors can only narrow what a caller matches: an entry
// matches when all its selectors are among the caller's.
package workloadattest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/sigil-spiffe/sigil/internal/selector"
)

// DefaultTimeout bounds one call's attestation when Config.Timeout is 0:
// long enough to hash a large executable (unix discover_workload_path),
// short enough that a stuck plugin does not hold a Workload API call.
const DefaultTimeout = 10 * time.Second

// Attestor is one workload attestor plugin (e.g.
// internal/attest/workload/unix). It must return soon after ctx is done.
type Attestor interface {
	Attest(ctx context.Context, pid int32) ([]selector.Selector, error)
}

// Plugin is a configured workload attestor and the name it was configured
// under (WorkloadAttestor "<Name>"), which names it in logs and errors.
type Plugin struct {
	Name     string
	Attestor Attestor
}

// Config configures a Set.
type Config struct {
	// Plugins run for every caller; at least one, with distinct names.
	Plugins []Plugin
	// Timeout is the per-call deadline; 0 is DefaultTimeout.
	Timeout time.Duration
	// Log; nil discards.
	Log *slog.Logger
	// Metrics is optional.
	Metrics Metrics
}

// Metrics receives the attestors' measurements (internal/telemetry's Agent
// implements it).
type Metrics interface {
	// WorkloadAttestorDone is called when a plugin answers a call (also
	// after the call's deadline), with its name, how long it took and its
	// error.
	WorkloadAttestorDone(plugin string, d time.Duration, err error)
}

// Set runs its plugins concurrently for each call. It is safe for
// concurrent use.
type Set struct {
	plugins []Plugin
	timeout time.Duration
	log     *slog.Logger
	metrics Metrics
}

// New validates cfg.
func New(cfg Config) (*Set, error) {
	if len(cfg.Plugins) == 0 {
		return nil, errors.New("workload attestation: at least one WorkloadAttestor is required")
	}
	seen := make(map[string]bool, len(cfg.Plugins))
	for _, p := range cfg.Plugins {
		switch {
		case p.Name == "":
			return nil, errors.New("workload attestation: a WorkloadAttestor has no name")
		case p.Attestor == nil:
			return nil, fmt.Errorf("workload attestation: WorkloadAttestor %q has no attestor", p.Name)
		case seen[p.Name]:
			return nil, fmt.Errorf("workload attestation: WorkloadAttestor %q is configured twice", p.Name)
		}
		seen[p.Name] = true
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("workload attestation: negative timeout %s", cfg.Timeout)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Set{plugins: append([]Plugin(nil), cfg.Plugins...), timeout: cfg.Timeout, log: log, metrics: cfg.Metrics}, nil
}

// Failure is one plugin's failure in a call.
type Failure struct {
	// Plugin is the plugin's name.
	Plugin string
	// TimedOut: the plugin had not answered by the call's deadline.
	TimedOut bool
	// Err is the plugin's error (context.DeadlineExceeded when it timed
	// out without answering).
	Err error
}

// Error is returned by Attest when no plugin succeeded.
type Error struct {
	PID      int32
	Failures []Failure
}

// Error names every plugin and how it failed (its own error is in the
// agent's log and in Unwrap, not here: this text goes to the caller).
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("workload attestation failed:")
	for i, f := range e.Failures {
		if i > 0 {
			b.WriteByte(',')
		}
		what := "failed"
		if f.TimedOut {
			what = "timed out"
		}
		fmt.Fprintf(&b, " WorkloadAttestor %q %s", f.Plugin, what)
	}
	return b.String()
}

// Unwrap returns the plugins' errors.
func (e *Error) Unwrap() []error {
	errs := make([]error, len(e.Failures))
	for i, f := range e.Failures {
		errs[i] = f.Err
	}
	return errs
}

type result struct {
	i    int
	sels []selector.Selector
	err  error
}

// Attest runs every plugin against pid at once and returns their selectors
// merged (in plugin order). It returns when all have answered or at the
// deadline, whichever comes first; a plugin still running then is told to
// stop (its context is cancelled) and its late answer is dropped. It fails
// with an *Error when no plugin succeeded, and with ctx's error when the
// caller went away.
func (s *Set) Attest(ctx context.Context, pid int32) ([]selector.Selector, error) {
	callCtx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	// Buffered: a plugin answering after the deadline does not block.
	results := make(chan result, len(s.plugins))
	for i, p := range s.plugins {
		go func() {
			start := time.Now()
			sels, err := p.Attestor.Attest(callCtx, pid)
			results <- result{i: i, sels: sels, err: err}
			if s.metrics != nil {
				s.metrics.WorkloadAttestorDone(p.Name, time.Since(start), err)
			}
		}()
	}
	got := make([]*result, len(s.plugins))
	pending := len(s.plugins)
	for pending > 0 {
		select {
		case r := <-results:
			got[r.i] = &r
			pending--
		case <-callCtx.Done():
			pending = 0
		}
	}
	if err := ctx.Err(); err != nil {
		// The caller went away: nothing to report about the plugins.
		return nil, fmt.Errorf("workload attestation: %w", err)
	}
	var (
		sels     []selector.Selector
		failures []Failure
		ok       int
	)
	for i, r := range got {
		name := s.plugins[i].Name
		switch {
		case r == nil:
			failures = append(failures, Failure{Plugin: name, TimedOut: true, Err: context.DeadlineExceeded})
			s.log.Warn("Workload attestor timed out", "attestor", name, "pid", pid, "timeout", s.timeout)
		case r.err != nil:
			timedOut := errors.Is(r.err, context.DeadlineExceeded) && callCtx.Err() != nil
			failures = append(failures, Failure{Plugin: name, TimedOut: timedOut, Err: r.err})
			s.log.Warn("Workload attestor failed", "attestor", name, "pid", pid, "error", r.err)
		default:
			ok++
			sels = append(sels, r.sels...)
		}
	}
	if ok == 0 {
		return nil, &Error{PID: pid, Failures: failures}
	}
	return sels, nil
}
