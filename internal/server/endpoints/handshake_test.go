package endpoints

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"
)

// blockingCreds stands in for TLS: its server handshake reads the
// ClientHello record, then "computes" until its work channel is closed,
// writes its reply and waits for the client's answer.
type blockingCreds struct {
	credentials.TransportCredentials
	work    chan struct{}
	running atomic.Int32
	maxRun  atomic.Int32
}

func (b *blockingCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	hello := make([]byte, 9)
	if _, err := io.ReadFull(c, hello); err != nil {
		return nil, nil, err
	}
	n := b.running.Add(1)
	for {
		m := b.maxRun.Load()
		if n <= m || b.maxRun.CompareAndSwap(m, n) {
			break
		}
	}
	<-b.work
	b.running.Add(-1)
	if _, err := c.Write([]byte("server-hello")); err != nil {
		return nil, nil, err
	}
	if _, err := io.ReadFull(c, make([]byte, 8)); err != nil {
		return nil, nil, err
	}
	return c, nil, nil
}

var clientHello = []byte{22, 3, 1, 0, 4, 1, 0, 0, 0} // a handshake record of 4 bytes

// handshake runs the server side of one connection whose client sends
// send, and returns the server's result.
func handshake(creds credentials.TransportCredentials, send []byte) (client net.Conn, result <-chan error) {
	c, s := net.Pipe()
	res := make(chan error, 1)
	go func() {
		_, _, err := creds.ServerHandshake(s)
		if err != nil {
			s.Close()
		}
		res <- err
	}()
	if len(send) > 0 {
		go func() { _, _ = c.Write(send) }()
	}
	return c, res
}

// The TCP listener's handshake admission: with one slot, a second
// ClientHello waits at most the gate's wait and is then shed before any
// work is done for it; a connection that sent nothing and one whose client
// stalls after the server's reply hold no slot.
func TestHandshakeGate(t *testing.T) {
	inner := &blockingCreds{work: make(chan struct{})}
	var shed atomic.Int32
	gate := newHandshakeGate(1, 200*time.Millisecond, func() { shed.Add(1) })
	creds := gatedCreds{inner, gate}

	// An idle connection (no ClientHello) holds no slot.
	idle, idleRes := handshake(creds, nil)
	defer idle.Close()

	a, aRes := handshake(creds, clientHello) // takes the slot, computes
	defer a.Close()
	for deadline := time.Now().Add(time.Minute); inner.running.Load() != 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the first handshake never started computing")
		}
	}
	b, bRes := handshake(creds, clientHello) // waits, then is shed
	defer b.Close()
	select {
	case err := <-bRes:
		if !errors.Is(err, errHandshakeShed) {
			t.Fatalf("second handshake: %v, want shed", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("second handshake neither shed nor done")
	}
	if shed.Load() != 1 || inner.maxRun.Load() != 1 {
		t.Fatalf("shed %d, at most %d computing; want 1 and 1", shed.Load(), inner.maxRun.Load())
	}

	// A finishes its computation and writes its reply; its client never
	// answers, yet the slot is free: C gets it and completes.
	close(inner.work)
	if _, err := io.ReadFull(a, make([]byte, len("server-hello"))); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); len(gate.slots) > 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the stalled handshake kept its slot")
		}
	}
	c, cRes := handshake(creds, clientHello)
	defer c.Close()
	if _, err := io.ReadFull(c, make([]byte, len("server-hello"))); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("finished")); err != nil {
		t.Fatal(err)
	}
	if err := <-cRes; err != nil {
		t.Fatalf("third handshake: %v", err)
	}
	select {
	case err := <-aRes:
		t.Fatalf("stalled handshake ended: %v", err)
	case err := <-idleRes:
		t.Fatalf("idle connection's handshake ended: %v", err)
	default:
	}
	if shed.Load() != 1 {
		t.Fatalf("shed %d, want 1", shed.Load())
	}
}

// A first record longer than a TLS record allows is refused at once.
func TestHandshakeGateOversizedRecord(t *testing.T) {
	inner := &blockingCreds{work: make(chan struct{})}
	close(inner.work)
	creds := gatedCreds{inner, newHandshakeGate(1, time.Millisecond, nil)}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, res := handshake(creds, []byte{22, 3, 1, 0xff, 0xff})
	defer c.Close()
	select {
	case err := <-res:
		if err == nil {
			t.Fatal("oversized first record accepted")
		}
	case <-ctx.Done():
		t.Fatal("oversized first record: no answer")
	}
}

// The gate refuses at once a connection it predicts would wait longer than
// its wait (the connections ahead of it times the recent hold time, over
// the slots), and admits, in turn, one predicted to wait less; the hold
// time it predicts with follows the handshakes it saw.
func TestHandshakeGatePredictsWait(t *testing.T) {
	var shed atomic.Int32
	gate := newHandshakeGate(1, time.Hour, func() { shed.Add(1) })
	clk := time.Unix(1000, 0)
	var mu sync.Mutex
	gate.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return clk }
	advance := func(d time.Duration) { mu.Lock(); clk = clk.Add(d); mu.Unlock() }

	// Handshakes that held their slot 40 minutes each (a starved server):
	// the average follows them.
	for i := 0; i < 40; i++ {
		since, ok := gate.acquire()
		if !ok {
			t.Fatal("a free slot was refused")
		}
		advance(40 * time.Minute)
		gate.release(since)
	}
	if h := time.Duration(gate.hold.Load()); h < 35*time.Minute || h > 40*time.Minute {
		t.Fatalf("hold average %v after handshakes of 40m", h)
	}

	// One computing, one waiting (predicted 40m): admitted once the
	// first is done.
	first, ok := gate.acquire()
	if !ok {
		t.Fatal("a free slot was refused")
	}
	second := make(chan bool, 1)
	go func() { _, ok := gate.acquire(); second <- ok }()
	for deadline := time.Now().Add(time.Minute); gate.waiting.Load() != 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the second connection is not waiting")
		}
	}
	// A third would wait for both (~80m > 1h): refused now, without waiting.
	if _, ok := gate.acquire(); ok || shed.Load() != 0 {
		t.Fatalf("third connection admitted (%v), shed callback %d (the caller counts it)", ok, shed.Load())
	}
	gate.release(first)
	select {
	case ok := <-second:
		if !ok {
			t.Fatal("the waiting connection was refused")
		}
	case <-time.After(time.Minute):
		t.Fatal("the waiting connection never got the slot")
	}
}
