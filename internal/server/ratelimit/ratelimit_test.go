package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/clock"
)

func TestFailedAttestationBucket(t *testing.T) {
	clk := clock.NewFake(time.Unix(1000, 0))
	l := New(Config{Attestation: true, FailureBurst: 3, FailureRate: 1, Clock: clk})
	a := netip.MustParseAddr("192.0.2.1")
	b := netip.MustParseAddr("192.0.2.2")

	for i := 0; i < 3; i++ {
		if err := l.CheckAttest(a); err != nil {
			t.Fatalf("check %d: %v", i, err)
		}
		l.AttestFailed(a)
	}
	err := l.CheckAttest(a)
	if !errors.Is(err, ErrLimited) {
		t.Fatalf("after burst: %v, want ErrLimited", err)
	}
	if err := l.CheckAttest(b); err != nil {
		t.Fatalf("other address limited: %v", err)
	}
	// IPv4-mapped IPv6 is the same client.
	if err := l.CheckAttest(netip.MustParseAddr("::ffff:192.0.2.1")); !errors.Is(err, ErrLimited) {
		t.Fatalf("mapped address not limited: %v", err)
	}

	clk.Add(time.Second)
	if err := l.CheckAttest(a); err != nil {
		t.Fatalf("after refill: %v", err)
	}
	l.AttestFailed(a)
	if err := l.CheckAttest(a); !errors.Is(err, ErrLimited) {
		t.Fatalf("after another failure: %v", err)
	}

	// A fully refilled bucket is forgotten.
	clk.Add(time.Hour)
	if err := l.CheckAttest(a); err != nil {
		t.Fatal(err)
	}
	if n := l.TrackedAddrs(); n != 0 {
		t.Fatalf("tracked = %d, want 0", n)
	}
}

func TestIPv6GroupedBy64(t *testing.T) {
	l := New(Config{Attestation: true, FailureBurst: 2, FailureRate: 0.001, Clock: clock.NewFake(time.Unix(0, 0))})
	l.AttestFailed(netip.MustParseAddr("2001:db8:1:2::1"))
	l.AttestFailed(netip.MustParseAddr("2001:db8:1:2::ffff"))
	if err := l.CheckAttest(netip.MustParseAddr("2001:db8:1:2:abcd::9")); !errors.Is(err, ErrLimited) {
		t.Fatalf("same /64 not limited: %v", err)
	}
	if err := l.CheckAttest(netip.MustParseAddr("2001:db8:1:3::1")); err != nil {
		t.Fatalf("other /64 limited: %v", err)
	}
}

func TestDisabled(t *testing.T) {
	l := New(Config{FailureBurst: 1})
	a := netip.MustParseAddr("192.0.2.1")
	for i := 0; i < 10; i++ {
		l.AttestFailed(a)
	}
	if err := l.CheckAttest(a); err != nil {
		t.Fatalf("disabled limiter limited: %v", err)
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
