package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clock"
)

func TestFailurePenalty(t *testing.T) {
	clk := clock.NewFake(time.Unix(1000, 0))
	l := New(Config{Attestation: true, FailureBurst: 3, FailureRate: 1, Clock: clk})
	a := netip.MustParseAddr("192.0.2.1")
	b := netip.MustParseAddr("192.0.2.2")

	// The burst is answered at once, then answers leave at the refill rate.
	for i, want := range []time.Duration{0, 0, 0, time.Second, 2 * time.Second} {
		if got := l.AttestFailed(a); got != want {
			t.Fatalf("failure %d: penalty %s, want %s", i, got, want)
		}
	}
	if got := l.AttestFailed(b); got != 0 {
		t.Fatalf("other address penalized: %s", got)
	}
	// IPv4-mapped IPv6 is the same client.
	if got := l.AttestFailed(netip.MustParseAddr("::ffff:192.0.2.1")); got != 3*time.Second {
		t.Fatalf("mapped address: penalty %s, want 3s", got)
	}
	clk.Add(2 * time.Second)
	if got := l.AttestFailed(a); got != 2*time.Second {
		t.Fatalf("after 2s: penalty %s, want 2s", got)
	}
	// A source whose failures are all forgiven is forgotten once idle.
	clk.Add(time.Hour)
	release, err := l.AcquireCheck(context.Background(), netip.AddrPortFrom(a, 1))
	if err != nil {
		t.Fatal(err)
	}
	release()
	release() // idempotent
	if got := l.AttestFailed(a); got != 0 {
		t.Fatalf("after an hour: penalty %s", got)
	}
}

func TestPenaltyIsBounded(t *testing.T) {
	clk := clock.NewFake(time.Unix(0, 0))
	l := New(Config{Attestation: true, FailureBurst: 1, FailureRate: 2, MaxPenalty: 5 * time.Second, Clock: clk})
	a := netip.MustParseAddr("192.0.2.1")
	distinct := map[time.Duration]bool{}
	for i := range 1000 {
		d := l.AttestFailed(a)
		if d > 5*time.Second {
			t.Fatalf("penalty %s exceeds MaxPenalty", d)
		}
		if i >= 20 { // past the queue behind the refill (2/s x 5 s deep)
			if d < 5*time.Second/2 {
				t.Fatalf("penalty at the cap %s, want within [MaxPenalty/2, MaxPenalty]", d)
			}
			distinct[d] = true
		}
	}
	if len(distinct) < 100 {
		t.Fatalf("only %d distinct penalties at the cap: holds are not spread", len(distinct))
	}
	// The queue behind the refill is bounded too: after MaxPenalty the
	// source is back within its budget.
	clk.Add(5*time.Second + time.Second)
	if got := l.AttestFailed(a); got != 0 {
		t.Fatalf("after MaxPenalty and a refill: penalty %s, want 0", got)
	}
}

func TestIPv6GroupedBy64(t *testing.T) {
	l := New(Config{Attestation: true, FailureBurst: 2, FailureRate: 0.001, Clock: clock.NewFake(time.Unix(0, 0))})
	l.AttestFailed(netip.MustParseAddr("2001:db8:1:2::1"))
	l.AttestFailed(netip.MustParseAddr("2001:db8:1:2::ffff"))
	if d := l.AttestFailed(netip.MustParseAddr("2001:db8:1:2:abcd::9")); d == 0 {
		t.Fatal("same /64 not penalized")
	}
	if d := l.AttestFailed(netip.MustParseAddr("2001:db8:1:3::1")); d != 0 {
		t.Fatalf("other /64 penalized: %s", d)
	}
}

func TestDisabled(t *testing.T) {
	l := New(Config{FailureBurst: 1})
	a := netip.MustParseAddr("192.0.2.1")
	for i := 0; i < 10; i++ {
		if d := l.AttestFailed(a); d != 0 {
			t.Fatalf("disabled limiter penalized: %s", d)
		}
	}
	for i := 0; i < 10; i++ { // check slots are not limited either
		if _, err := l.AcquireCheck(context.Background(), netip.AddrPortFrom(a, 1)); err != nil {
			t.Fatal(err)
		}
	}
	if l.TrackedAddrs() != 0 {
		t.Fatal("disabled limiter tracks addresses")
	}
}

func TestBoundedMemory(t *testing.T) {
	clk := clock.NewFake(time.Unix(0, 0))
	l := New(Config{Attestation: true, FailureBurst: 5, FailureRate: 1, MaxTrackedAddrs: 16, Clock: clk})
	for i := 0; i < 1000; i++ {
		l.AttestFailed(netip.MustParseAddr(fmt.Sprintf("10.0.%d.%d", i/256, i%256)))
		if n := l.TrackedAddrs(); n > 16 {
			t.Fatalf("tracked %d addresses, max 16", n)
		}
	}
}

// Check slots are per source and never refused (a waiter only gives up
// with its context); waiting calls are served round robin over their
// connections, in arrival order within one.
func TestCheckSlots(t *testing.T) {
	l := New(Config{Attestation: true, CheckConcurrency: 1})
	ctx := context.Background()
	connA := netip.MustParseAddrPort("192.0.2.1:1000")
	connB := netip.MustParseAddrPort("192.0.2.1:2000")
	r1, err := l.AcquireCheck(ctx, connA)
	if err != nil {
		t.Fatal(err)
	}
	// Another source is not held up by this one's.
	rb, err := l.AcquireCheck(ctx, netip.MustParseAddrPort("192.0.2.2:1000"))
	if err != nil {
		t.Fatal(err)
	}
	rb()

	// Three calls queue on connection A, then one on B, then one more on
	// A that gives up.
	got := make(chan string, 4)
	var wg sync.WaitGroup
	queue := func(conn netip.AddrPort, name string) {
		n := l.busy(conn.Addr())
		wg.Go(func() {
			r, err := l.AcquireCheck(ctx, conn)
			if err != nil {
				t.Error(err)
				return
			}
			got <- name
			r()
		})
		for l.busy(conn.Addr()) != n+1 { // queued
			time.Sleep(time.Millisecond)
		}
	}
	queue(connA, "a1")
	queue(connA, "a2")
	queue(connA, "a3")
	queue(connB, "b1")
	cctx, cancel := context.WithCancel(ctx)
	go func() {
		for l.busy(connA.Addr()) != 6 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	if _, err := l.AcquireCheck(cctx, connA); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled waiter: %v", err)
	}
	r1()
	wg.Wait()
	close(got)
	var order []string
	for name := range got {
		order = append(order, name)
	}
	if fmt.Sprint(order) != "[a1 b1 a2 a3]" {
		t.Fatalf("slots granted in order %v, want [a1 b1 a2 a3]", order)
	}
	if n := l.TrackedAddrs(); n != 0 {
		t.Fatalf("%d sources tracked after all calls ended, want 0", n)
	}
}

func TestHold(t *testing.T) {
	clk := clock.NewFake(time.Unix(0, 0))
	l := New(Config{Attestation: true, MaxHeld: 1, Clock: clk})
	if l.Hold(context.Background(), 0) {
		t.Fatal("held without a penalty")
	}
	done := make(chan bool)
	go func() { done <- l.Hold(context.Background(), time.Second) }()
	for l.Held() != 1 {
		time.Sleep(time.Millisecond)
	}
	// At MaxHeld, further answers are not held.
	if l.Hold(context.Background(), time.Second) {
		t.Fatal("held beyond MaxHeld")
	}
	clk.Add(time.Second)
	if !<-done {
		t.Fatal("first hold not reported")
	}
	// A held answer ends with its call.
	ctx, cancel := context.WithCancel(context.Background())
	go cancel()
	if !l.Hold(ctx, time.Hour) {
		t.Fatal("not held")
	}
	if l.Held() != 0 {
		t.Fatalf("held = %d after all ended", l.Held())
	}
}

func TestGateBoundsConcurrencyAndQueue(t *testing.T) {
	l := New(Config{Signing: true, MaxConcurrent: 1, MaxWaiting: 1, MaxWait: time.Hour})
	ctx := context.Background()
	release, err := l.AcquireSign(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		r, err := l.AcquireSign(ctx)
		if err == nil {
			r()
		}
		got <- err
	}()
	for l.signSem.waiting.Load() != 1 { // wait until the goroutine queues
		time.Sleep(time.Millisecond)
	}
	if _, err := l.AcquireSign(ctx); !errors.Is(err, ErrLimited) {
		t.Fatalf("queue overflow: %v, want ErrLimited", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	release()
	release() // idempotent
	if err := <-got; err != nil {
		t.Fatalf("queued acquire: %v", err)
	}
	// A canceled caller gets its context error, not a limit.
	hold, _ := l.AcquireSign(ctx)
	defer hold()
	l2 := New(Config{Signing: true, MaxConcurrent: 1})
	h2, _ := l2.AcquireSign(ctx)
	defer h2()
	if _, err := l2.AcquireSign(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled acquire: %v", err)
	}
	// Disabled signing limit never blocks.
	l3 := New(Config{MaxConcurrent: 1})
	for i := 0; i < 5; i++ {
		if _, err := l3.AcquireSign(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// busy reports how many calls wait for or hold a check slot of addr.
func (l *Limiter) busy(addr netip.Addr) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s := l.sources[Source(addr)]; s != nil {
		return s.busy
	}
	return 0
}

// TestExchange: an exchange's context ends MaxExchange after it opened,
// with ErrExchangeTimeout as its cause, whether or not the attestation
// limits are on; one cancelled first is not a timeout.
func TestExchange(t *testing.T) {
	for _, on := range []bool{true, false} {
		clk := clock.NewFake(time.Unix(0, 0))
		l := New(Config{Attestation: on, MaxExchange: time.Minute, Clock: clk})
		ctx, cancel := l.Exchange(context.Background())
		done, cancelDone := l.Exchange(context.Background())
		cancelDone()
		clk.Add(time.Minute - time.Nanosecond)
		if ctx.Err() != nil {
			t.Fatalf("attestation %v: ended before MaxExchange", on)
		}
		clk.Add(time.Nanosecond)
		<-ctx.Done()
		if !errors.Is(context.Cause(ctx), ErrExchangeTimeout) {
			t.Fatalf("attestation %v: cause %v", on, context.Cause(ctx))
		}
		cancel()
		if errors.Is(context.Cause(done), ErrExchangeTimeout) {
			t.Fatalf("attestation %v: an exchange cancelled first timed out", on)
		}
	}
	// The real clock: a context deadline.
	l := New(Config{MaxExchange: time.Hour})
	ctx, cancel := l.Exchange(context.Background())
	defer cancel()
	if d, ok := ctx.Deadline(); !ok || time.Until(d) < 59*time.Minute {
		t.Fatalf("deadline %v, %v", d, ok)
	}
}

// TestAwaitAnswer: a source may have MaxAwaiting exchanges waiting on
// their clients; the next is refused at once (ErrLimited), other sources
// are not, a release frees a place, and with the attestation limits off
// nothing is counted.
func TestAwaitAnswer(t *testing.T) {
	clk := clock.NewFake(time.Unix(0, 0))
	l := New(Config{Attestation: true, MaxAwaiting: 2, Clock: clk})
	a := netip.MustParseAddrPort("192.0.2.1:1000")
	var releases []func()
	for range 2 {
		r, err := l.AwaitAnswer(a)
		if err != nil {
			t.Fatal(err)
		}
		releases = append(releases, r)
	}
	// Another connection of the same source counts too.
	if _, err := l.AwaitAnswer(netip.MustParseAddrPort("192.0.2.1:2000")); !errors.Is(err, ErrLimited) {
		t.Fatalf("third: %v, want ErrLimited", err)
	}
	r, err := l.AwaitAnswer(netip.MustParseAddrPort("192.0.2.2:1000"))
	if err != nil {
		t.Fatalf("other source: %v", err)
	}
	r()
	releases[0]()
	releases[0]() // idempotent
	if r, err = l.AwaitAnswer(a); err != nil {
		t.Fatalf("after a release: %v", err)
	}
	r()
	releases[1]()
	if n := l.TrackedAddrs(); n != 0 {
		t.Fatalf("%d sources tracked once nothing waits", n)
	}

	off := New(Config{MaxAwaiting: 1, Clock: clk})
	for range 3 {
		if _, err := off.AwaitAnswer(a); err != nil {
			t.Fatalf("limits off: %v", err)
		}
	}
}
