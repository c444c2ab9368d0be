// Package ratelimit protects the server from abuse without punishing large
// fleets, and never refuses a request because of its source when its
// credential is valid (unless the source keeps hundreds of attestations
// stalled mid-challenge, see Exchange and AwaitAnswer below).
//
// Two mechanisms, each toggled by SPIRE's `ratelimit { attestation, signing }`:
//
//   - Attestation (per source address; IPv6 grouped by /64). Every
//     attestation's credential is checked through a few per-source check
//     slots (AcquireCheck), shared round robin by the source's connections:
//     the check is cheap (a hash and one indexed read), and only a request
//     whose credential checks out goes on to the expensive work. Successful attestations cost nothing, so a
//     thousand devices behind one NAT can all attest at once. Failed ones
//     are charged to a per-source token bucket (default: a burst of 20,
//     refilled at 2 per second); once it is empty, the answers to further
//     failures are held back (AttestFailed, Hold) so they leave at the
//     refill rate, each at most MaxPenalty late (default 30 s). A client guessing join
//     tokens, or flooding the server with bad ones, is slowed to a trickle
//     and costs little CPU per attempt, while a valid credential from the
//     same address, on its own connection, is checked after at most one
//     attempt of each of the flood's connections.
//   - Work. The amount of concurrent expensive attestation work and of
//     signing work is capped server-wide (default 4 x CPUs slots each).
//     Callers wait for a slot (at most MaxWait, and only while fewer than
//     MaxWaiting are queued) instead of failing at once.
//
// Whatever the settings, one attestation exchange (an AttestAgent call,
// from its first message to its answer, challenges included) lasts at most
// MaxExchange (Exchange): a client that stalls (never sends its data, or
// never answers a challenge) holds its stream, goroutine and memory no
// longer. With the attestation limits on, a source may moreover have at
// most MaxAwaiting exchanges waiting for their client's answer to a
// challenge at once (AwaitAnswer); a further one is refused before its
// challenge is sent. A valid agent answers within a round trip, so only
// clients that stall fill that cap.
//
// Memory is bounded: a source is tracked only while it has calls in
// progress or failures not yet forgiven, at most MaxTrackedAddrs idle ones
// are kept, and at most MaxHeld failed answers are held back at once
// (beyond that they are answered at once: a failure is a failure).
package ratelimit

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/sigil-spiffe/sigil/internal/clock"
)

// ErrLimited is wrapped by every error returned because of a limit. The API
// layer maps it to codes.ResourceExhausted. The server-wide work gates
// return it, and AwaitAnswer for a source with MaxAwaiting exchanges
// waiting on their clients; the other per-source limits never refuse.
var ErrLimited = errors.New("rate limited")

// ErrExchangeTimeout is the cause (context.Cause) of the end of an
// exchange's context (Exchange) after MaxExchange.
var ErrExchangeTimeout = errors.New("attestation exchange timed out")

// Defaults for zero Config fields.
const (
	DefaultFailureBurst     = 20
	DefaultFailureRate      = 2.0 // failures forgiven per second
	DefaultMaxPenalty       = 30 * time.Second
	DefaultMaxHeld          = 4096
	DefaultCheckConcurrency = 2
	DefaultMaxTrackedAddrs  = 100_000
	DefaultMaxWait          = 30 * time.Second
	DefaultMaxWaiting       = 4096
	// DefaultMaxExchange is longer than an agent's own bound on an
	// attestation (30 s for sigil-agent and spire-agent RPCs) plus the
	// longest wait for a work slot, so a client that plays by the rules
	// always ends first.
	DefaultMaxExchange = 60 * time.Second
	DefaultMaxAwaiting = 512
)

// Config configures a Limiter. Zero numeric fields take the defaults above;
// MaxConcurrent defaults to 4 x runtime.NumCPU().
type Config struct {
	// Attestation enables the per-source attestation limits and the cap on
	// concurrent expensive attestation work.
	Attestation bool
	// Signing enables the cap on concurrent signing work (agent renewal,
	// X509/JWT-SVID and downstream CA signing).
	Signing bool

	// FailureBurst failed attestations per source are answered at once;
	// after that, answers to failures leave at FailureRate per second.
	FailureBurst int
	FailureRate  float64
	// MaxPenalty bounds how long the answer to one failure is held back.
	MaxPenalty time.Duration
	// MaxHeld bounds the failed answers held back at once, all sources
	// together.
	MaxHeld int
	// CheckConcurrency is the number of credential checks one source may
	// run at once; its further requests queue, served round robin over
	// their connections.
	CheckConcurrency int
	MaxTrackedAddrs  int

	MaxConcurrent int
	MaxWaiting    int
	MaxWait       time.Duration

	// MaxExchange bounds one attestation exchange (Exchange), whether or
	// not Attestation is set.
	MaxExchange time.Duration
	// MaxAwaiting bounds the exchanges of one source waiting for their
	// client's answer to a challenge at once (AwaitAnswer).
	MaxAwaiting int

	Clock clock.Clock
}

// Limiter applies the limits. It is safe for concurrent use.
type Limiter struct {
	cfg Config
	clk clock.Clock

	mu        sync.Mutex
	sources   map[netip.Prefix]*source
	lastSweep time.Time

	held atomic.Int64

	attestSem *gate
	signSem   *gate
}

// source is the state of one source address (or IPv6 /64).
type source struct {
	// tokens is the failure budget: up to FailureBurst; below zero, the
	// number of failures whose answers are queued behind the refill.
	tokens float64
	last   time.Time
	// Check slots: running counts the checks in progress; waiting calls
	// queue per connection (lanes), and a freed slot goes to the head of
	// the lane at the front of turns, which then moves to the back: round
	// robin over connections, first come first served within one.
	running int
	lanes   map[netip.AddrPort]*lane
	turns   list.List // of *lane with waiting calls
	// busy counts calls waiting for or holding a check slot, and
	// exchanges waiting for their client (awaiting); a busy source is
	// never dropped.
	busy     int
	awaiting int
}

// lane is the queue of one connection's calls waiting for a check slot.
type lane struct {
	conn    netip.AddrPort
	waiting []*waiter
	turn    *list.Element // in source.turns
}

type waiter struct {
	ready   chan struct{} // closed when granted
	granted bool
}

// New returns a Limiter.
func New(cfg Config) *Limiter {
	if cfg.FailureBurst <= 0 {
		cfg.FailureBurst = DefaultFailureBurst
	}
	if cfg.FailureRate <= 0 {
		cfg.FailureRate = DefaultFailureRate
	}
	if cfg.MaxPenalty <= 0 {
		cfg.MaxPenalty = DefaultMaxPenalty
	}
	if cfg.MaxHeld <= 0 {
		cfg.MaxHeld = DefaultMaxHeld
	}
	if cfg.CheckConcurrency <= 0 {
		cfg.CheckConcurrency = DefaultCheckConcurrency
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
	if cfg.MaxExchange <= 0 {
		cfg.MaxExchange = DefaultMaxExchange
	}
	if cfg.MaxAwaiting <= 0 {
		cfg.MaxAwaiting = DefaultMaxAwaiting
	}
	clk := clock.OrReal(cfg.Clock)
	return &Limiter{
		cfg:       cfg,
		clk:       clk,
		sources:   make(map[netip.Prefix]*source),
		lastSweep: clk.Now(),
		attestSem: newGate("attestation", cfg),
		signSem:   newGate("signing", cfg),
	}
}

// Source is the key a source address is tracked under: the address for
// IPv4, its /64 for IPv6 (one customer network).
func Source(addr netip.Addr) netip.Prefix {
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

// refill brings the budget up to date at now and reports whether it is
// full (the source then carries no failure history).
func (l *Limiter) refill(s *source, now time.Time) bool {
	if el := now.Sub(s.last).Seconds(); el > 0 {
		s.tokens += el * l.cfg.FailureRate
		s.last = now
	}
	if s.tokens >= float64(l.cfg.FailureBurst) {
		s.tokens = float64(l.cfg.FailureBurst)
		return true
	}
	return false
}

// getLocked returns the source of k, creating it with a full budget.
func (l *Limiter) getLocked(k netip.Prefix, now time.Time) *source {
	s, ok := l.sources[k]
	if !ok {
		l.sweepLocked(now)
		s = &source{tokens: float64(l.cfg.FailureBurst), last: now}
		l.sources[k] = s
	}
	return s
}

// dropIfIdleLocked forgets s when nothing is waiting on it and its budget
// is full.
func (l *Limiter) dropIfIdleLocked(k netip.Prefix, s *source, now time.Time) {
	if s.busy == 0 && l.refill(s, now) && l.sources[k] == s {
		delete(l.sources, k)
	}
}

// AcquireCheck waits for one of the source's credential-check slots (at
// most CheckConcurrency at once per source). Waiting calls are served
// round robin over their connections (peer is the caller's address and
// port), in arrival order within one, so a connection with one call is
// served after at most one call of each other busy connection of its
// source, however many those have queued. It fails only with ctx's error:
// it never refuses. release must be called exactly once. With attestation
// limits disabled it returns at once.
func (l *Limiter) AcquireCheck(ctx context.Context, peer netip.AddrPort) (release func(), err error) {
	if !l.cfg.Attestation {
		return func() {}, nil
	}
	peer = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
	k := Source(peer.Addr())
	l.mu.Lock()
	s := l.getLocked(k, l.clk.Now())
	s.busy++
	var once sync.Once
	release = func() {
		once.Do(func() {
			l.mu.Lock()
			s.running--
			l.grantLocked(s)
			s.busy--
			l.dropIfIdleLocked(k, s, l.clk.Now())
			l.mu.Unlock()
		})
	}
	if s.running < l.cfg.CheckConcurrency && s.turns.Len() == 0 {
		s.running++
		l.mu.Unlock()
		return release, nil
	}
	w := &waiter{ready: make(chan struct{})}
	ln := s.lanes[peer]
	if ln == nil {
		if s.lanes == nil {
			s.lanes = make(map[netip.AddrPort]*lane)
		}
		ln = &lane{conn: peer}
		s.lanes[peer] = ln
		ln.turn = s.turns.PushBack(ln)
	}
	ln.waiting = append(ln.waiting, w)
	l.mu.Unlock()

	select {
	case <-w.ready:
		return release, nil
	case <-ctx.Done():
	}
	l.mu.Lock()
	if w.granted { // granted meanwhile: pass the slot on
		l.mu.Unlock()
		release()
		return nil, ctx.Err()
	}
	ln.waiting = slices.DeleteFunc(ln.waiting, func(x *waiter) bool { return x == w })
	if len(ln.waiting) == 0 {
		s.turns.Remove(ln.turn)
		delete(s.lanes, ln.conn)
	}
	s.busy--
	l.dropIfIdleLocked(k, s, l.clk.Now())
	l.mu.Unlock()
	return nil, ctx.Err()
}

// grantLocked hands free check slots of s to waiting calls, one lane at a
// time in turn.
func (l *Limiter) grantLocked(s *source) {
	for s.running < l.cfg.CheckConcurrency && s.turns.Len() > 0 {
		ln := s.turns.Remove(s.turns.Front()).(*lane)
		w := ln.waiting[0]
		ln.waiting[0] = nil
		ln.waiting = ln.waiting[1:]
		if len(ln.waiting) > 0 {
			ln.turn = s.turns.PushBack(ln)
		} else {
			delete(s.lanes, ln.conn)
		}
		s.running++
		w.granted = true
		close(w.ready)
	}
}

// Exchange bounds one attestation exchange: the returned context ends
// MaxExchange after the call, with ErrExchangeTimeout as its cause, unless
// cancel (which must be called once the exchange is over) ends it first.
// It applies whatever the settings: a stalled client costs memory whether
// or not its source is rate limited.
func (l *Limiter) Exchange(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, real := l.clk.(clock.Real); real {
		return context.WithTimeoutCause(ctx, l.cfg.MaxExchange, ErrExchangeTimeout)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	fire := l.clk.After(l.cfg.MaxExchange)
	go func() {
		select {
		case <-fire:
			cancel(ErrExchangeTimeout)
		case <-ctx.Done():
		}
	}()
	return ctx, func() { cancel(context.Canceled) }
}

// MaxExchange is the bound Exchange puts on an exchange.
func (l *Limiter) MaxExchange() time.Duration { return l.cfg.MaxExchange }

// AwaitAnswer counts one exchange of peer's source as waiting for its
// client's answer to a challenge, until release (to be called exactly
// once, when the answer came or the exchange ended). With MaxAwaiting of
// the source's exchanges waiting already it refuses at once (ErrLimited):
// an agent answers within a round trip, so those are clients that stall.
// With attestation limits disabled it never refuses.
func (l *Limiter) AwaitAnswer(peer netip.AddrPort) (release func(), err error) {
	if !l.cfg.Attestation {
		return func() {}, nil
	}
	k := Source(peer.Addr())
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.getLocked(k, l.clk.Now())
	if s.awaiting >= l.cfg.MaxAwaiting {
		l.dropIfIdleLocked(k, s, l.clk.Now())
		return nil, fmt.Errorf("%w: %d attestations from this address await challenge answers", ErrLimited, s.awaiting)
	}
	s.awaiting++
	s.busy++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			s.awaiting--
			s.busy--
			l.dropIfIdleLocked(k, s, l.clk.Now())
			l.mu.Unlock()
		})
	}, nil
}

// AttestFailed charges one failed attestation to addr and returns how long
// its answer should be held back (Hold): 0 while the source is within its
// burst, then what keeps the answers to its failures at FailureRate per
// second, at most MaxPenalty (once there, a random time between half of it
// and all of it).
func (l *Limiter) AttestFailed(addr netip.Addr) time.Duration {
	if !l.cfg.Attestation {
		return 0
	}
	k := Source(addr)
	now := l.clk.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.getLocked(k, now)
	l.refill(s, now)
	if s.tokens >= 1 {
		s.tokens--
		return 0
	}
	// Out of budget: this failure's token is reserved from the refill,
	// behind those of earlier failures; the queue is at most MaxPenalty
	// deep (further failures wait MaxPenalty without deepening it).
	s.tokens = max(s.tokens-1, -l.cfg.FailureRate*l.cfg.MaxPenalty.Seconds())
	d := time.Duration(-s.tokens / l.cfg.FailureRate * float64(time.Second))
	if d < l.cfg.MaxPenalty {
		return d
	}
	// At the cap, spread the holds over its upper half: answers to a
	// flood held together would otherwise come back together, and the
	// retries with them, as one wave every MaxPenalty.
	half := l.cfg.MaxPenalty / 2
	return l.cfg.MaxPenalty - half + rand.N(half+1)
}

// Hold waits d (an AttestFailed penalty) or until ctx is done, unless
// MaxHeld answers are held already; it reports whether it held.
func (l *Limiter) Hold(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return false
	}
	if l.held.Add(1) > int64(l.cfg.MaxHeld) {
		l.held.Add(-1)
		return false
	}
	defer l.held.Add(-1)
	select {
	case <-l.clk.After(d):
	case <-ctx.Done():
	}
	return true
}

// Held reports how many failed answers are held back now (for tests and
// metrics).
func (l *Limiter) Held() int { return int(l.held.Load()) }

// sweepLocked drops idle full-budget sources when the table is at capacity
// or a minute has passed, then, if still at capacity, idle ones with
// failure history. Busy sources are kept: their number is bounded by the
// calls in progress.
func (l *Limiter) sweepLocked(now time.Time) {
	if len(l.sources) < l.cfg.MaxTrackedAddrs && now.Sub(l.lastSweep) < time.Minute {
		return
	}
	l.lastSweep = now
	for k, s := range l.sources {
		if s.busy == 0 && l.refill(s, now) {
			delete(l.sources, k)
		}
	}
	for k, s := range l.sources {
		if len(l.sources) < l.cfg.MaxTrackedAddrs {
			break
		}
		if s.busy == 0 {
			delete(l.sources, k)
		}
	}
}

// TrackedAddrs reports how many sources are tracked (for tests and
// metrics).
func (l *Limiter) TrackedAddrs() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.sources)
}

// AcquireAttest waits for a slot of expensive attestation work. release
// must be called exactly once when the work is done. With attestation
// limits disabled it returns at once.
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
