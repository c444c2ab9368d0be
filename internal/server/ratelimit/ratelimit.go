// Package ratelimit protects the server from abuse without punishing large
// fleets.
//
// Two mechanisms, each toggled by SPIRE's `ratelimit { attestation, signing }`:
//
//   - Failed node attestations are limited per source address with a token
//     bucket (default: a burst of 20, refilled at 2 per second). Successful
//     attestations cost nothing, so a thousand devices behind one NAT can all
//     attest at once; a client guessing join tokens is slowed to the refill
//     rate. IPv6 addresses are grouped by /64.
//   - The amount of concurrent attestation and signing work is capped
//     server-wide (default 4 x CPUs slots each). Callers wait for a slot (at
//     most MaxWait, and only while fewer than MaxWaiting are queued) instead
//     of failing at once.
//
// Memory is bounded: buckets that have refilled completely carry no
// information and are dropped, and at most MaxTrackedAddrs are kept.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/sigil-spiffe/sigil/internal/clock"
)

// ErrLimited is wrapped by every error returned because of a limit. The API
// layer maps it to codes.ResourceExhausted.
var ErrLimited = errors.New("rate limited")

// Defaults for zero Config fields.
const (
	DefaultFailureBurst    = 20
	DefaultFailureRate     = 2.0 // failures forgiven per second
	DefaultMaxTrackedAddrs = 100_000
	DefaultMaxWait         = 30 * time.Second
	DefaultMaxWaiting      = 4096
)

// Config configures a Limiter. Zero numeric fields take the defaults above;
// MaxConcurrent defaults to 4 x runtime.NumCPU().
type Config struct {
	// Attestation enables the per-address failed-attestation limit and the
	// cap on concurrent attestation work.
	Attestation bool
	// Signing enables the cap on concurrent signing work (agent renewal,
	// X509/JWT-SVID and downstream CA signing).
	Signing bool

	FailureBurst    int
	FailureRate     float64
	MaxTrackedAddrs int
	MaxConcurrent   int
	MaxWaiting      int
	MaxWait         time.Duration
	Clock           clock.Clock
}

// Limiter applies the limits. It is safe for concurrent use.
type Limiter struct {
	cfg Config
	clk clock.Clock

	mu        sync.Mutex
	buckets   map[netip.Prefix]*bucket
	lastSweep time.Time

	attestSem *gate
	signSem   *gate
}

type bucket struct {
	tokens float64
	last   time.Time
}

// New returns a Limiter.
func New(cfg Config) *Limiter {
	if cfg.FailureBurst <= 0 {
		cfg.FailureBurst = DefaultFailureBurst
	}
	if cfg.FailureRate <= 0 {
		cfg.FailureRate = DefaultFailureRate
	}
	if cfg.MaxTrackedAddrs <= 0 {
		cfg.MaxTrackedAddrs = DefaultMaxTrackedAddrs
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = 4 * runtime.NumCPU()
	}
	if cfg.MaxWaiting <= 0 {
		cfg.MaxWaiting = DefaultMaxWaiting
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = DefaultMaxWait
	}
	clk := clock.OrReal(cfg.Clock)
	return &Limiter{
		cfg:       cfg,
		clk:       clk,
		buckets:   make(map[netip.Prefix]*bucket),
		lastSweep: clk.Now(),
		attestSem: newGate("attestation", cfg),
		signSem:   newGate("signing", cfg),
	}
}

// key groups IPv6 clients by /64 (one customer network) and IPv4 by address.
func key(addr netip.Addr) netip.Prefix {
	addr = addr.Unmap()
	bits := 32
	if addr.Is6() {
		bits = 64
	}
	p, err := addr.Prefix(bits)
	if err != nil { // zero Addr
		return netip.Prefix{}
	}
	return p
}

// refill brings b up to date at now and reports whether it is full.
func (l *Limiter) refill(b *bucket, now time.Time) bool {
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens += el * l.cfg.FailureRate
		b.last = now
	}
	if b.tokens >= float64(l.cfg.FailureBurst) {
		b.tokens = float64(l.cfg.FailureBurst)
		return true
	}
	return false
}

// CheckAttest returns an error wrapping ErrLimited when addr has used up its
// budget of failed attestations. It consumes nothing: only AttestFailed does.
func (l *Limiter) CheckAttest(addr netip.Addr) error {
	if !l.cfg.Attestation {
		return nil
	}
	k := key(addr)
	now := l.clk.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[k]
	if !ok {
		return nil
	}
	if l.refill(b, now) {
		delete(l.buckets, k)
		return nil
	}
	if b.tokens < 1 {
		wait := time.Duration((1 - b.tokens) / l.cfg.FailureRate * float64(time.Second))
		return fmt.Errorf("%w: too many failed attestations from %s; retry in %s", ErrLimited, addr.Unmap(), wait.Round(time.Millisecond))
	}
	return nil
}

// AttestFailed charges one failed attestation to addr.
func (l *Limiter) AttestFailed(addr netip.Addr) {
	if !l.cfg.Attestation {
		return
	}
	k := key(addr)
	now := l.clk.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[k]
	if !ok {
		l.sweepLocked(now)
		b = &bucket{tokens: float64(l.cfg.FailureBurst), last: now}
		l.buckets[k] = b
	} else {
		l.refill(b, now)
	}
	b.tokens--
	if b.tokens < 0 {
		b.tokens = 0
	}
}

// sweepLocked drops full buckets when the table is at capacity or a minute
// has passed, then, if still at capacity, arbitrary ones.
func (l *Limiter) sweepLocked(now time.Time) {
	if len(l.buckets) < l.cfg.MaxTrackedAddrs && now.Sub(l.lastSweep) < time.Minute {
		return
	}
	l.lastSweep = now
	for k, b := range l.buckets {
		if l.refill(b, now) {
			delete(l.buckets, k)
		}
	}
	for k := range l.buckets {
		if len(l.buckets) < l.cfg.MaxTrackedAddrs {
			break
		}
		delete(l.buckets, k)
	}
}

// TrackedAddrs reports how many address buckets are held (for tests and
// metrics).
func (l *Limiter) TrackedAddrs() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// AcquireAttest waits for an attestation work slot. release must be called
// exactly once when the work is done. With attestation limits disabled it
// returns at once.
func (l *Limiter) AcquireAttest(ctx context.Context) (release func(), err error) {
	if !l.cfg.Attestation {
		return func() {}, nil
	}
	return l.attestSem.acquire(ctx)
}

// AcquireSign waits for a signing work slot; see AcquireAttest.
func (l *Limiter) AcquireSign(ctx context.Context) (release func(), err error) {
	if !l.cfg.Signing {
		return func() {}, nil
	}
	return l.signSem.acquire(ctx)
}

// gate is a weighted semaphore with a bounded queue and a bounded wait.
type gate struct {
	name    string
	sem     *semaphore.Weighted
	waiting atomic.Int64
	max     int64
	wait    time.Duration
}

func newGate(name string, cfg Config) *gate {
	return &gate{
		name: name,
		sem:  semaphore.NewWeighted(int64(cfg.MaxConcurrent)),
		max:  int64(cfg.MaxWaiting),
		wait: cfg.MaxWait,
	}
}

func (g *gate) acquire(ctx context.Context) (func(), error) {
	if g.sem.TryAcquire(1) {
		return g.releaser(), nil
	}
	if g.waiting.Add(1) > g.max {
		g.waiting.Add(-1)
		return nil, fmt.Errorf("%w: server is busy with %s work; retry later", ErrLimited, g.name)
	}
	defer g.waiting.Add(-1)
	wctx, cancel := context.WithTimeout(ctx, g.wait)
	defer cancel()
	if err := g.sem.Acquire(wctx, 1); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: server is busy with %s work; retry later", ErrLimited, g.name)
	}
	return g.releaser(), nil
}

func (g *gate) releaser() func() {
	var once sync.Once
	return func() { once.Do(func() { g.sem.Release(1) }) }
}
