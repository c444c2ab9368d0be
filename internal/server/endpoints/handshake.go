package endpoints

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"
)

// DefaultHandshakeWait bounds how long a new TCP connection may wait for
// a handshake slot: half the handshake's own deadline (handshakeTimeout),
// the rest being left for the handshake itself (see handshakeGate).
const DefaultHandshakeWait = handshakeTimeout / 2

// DefaultHandshakeSlots is the number of TLS handshakes the TCP listener
// computes at once: twice the CPUs, at least 4.
func DefaultHandshakeSlots() int { return max(4, 2*runtime.GOMAXPROCS(0)) }

// errHandshakeShed fails a handshake the gate did not admit: the
// connection is closed and the client retries after its backoff.
var errHandshakeShed = errors.New("server busy with TLS handshakes; retry later")

// handshakeGate is the TCP listener's admission control. When thousands of
// agents reconnect at once (the server restarted) on a server short of
// CPU, their handshakes would all run at once, each getting a sliver of
// the CPU, and most would miss their deadline after doing most of the work
// (bench/RESULTS.md, "Reconnect storm"): no agent gets back. The gate lets
// a few handshakes compute at a time, in arrival order, and refuses a
// connection it predicts would wait longer than wait for its turn (the
// connections ahead of it times the recent time a slot is held, over the
// slots), or that did wait that long, before any work is done for it. The
// server then completes handshakes at the rate it can, stays responsive,
// and the refused clients come back after their jittered backoff. A server
// that keeps up refuses nobody: the prediction stays far below wait.
//
// A connection takes a slot only once its ClientHello has arrived (an idle
// TCP connection holds none), and gives it back as soon as the server has
// sent its reply and waits for the client (a client that stalls holds
// none): a slot covers the server's own share of the handshake (key
// exchange, its signature), never a wait for the network.
type handshakeGate struct {
	slots   chan struct{}
	wait    time.Duration
	shed    func() // called for each refused connection
	now     func() time.Time
	waiting atomic.Int64 // connections waiting for a slot
	hold    atomic.Int64 // recent time a slot is held, ns (moving average)
}

func newHandshakeGate(slots int, wait time.Duration, shed func()) *handshakeGate {
	if slots <= 0 {
		slots = DefaultHandshakeSlots()
	}
	if wait <= 0 {
		wait = DefaultHandshakeWait
	}
	if shed == nil {
		shed = func() {}
	}
	return &handshakeGate{slots: make(chan struct{}, slots), wait: wait, shed: shed, now: time.Now}
}

// predictedWait is how long a connection arriving now would wait for a
// slot.
func (g *handshakeGate) predictedWait() time.Duration {
	return time.Duration((g.waiting.Load() + 1) * g.hold.Load() / int64(cap(g.slots)))
}

// acquire takes a slot, or reports false when the connection is refused.
// On true, the caller gives the slot back with release(acquire time).
func (g *handshakeGate) acquire() (time.Time, bool) {
	select {
	case g.slots <- struct{}{}:
		return g.now(), true
	default:
	}
	if g.predictedWait() > g.wait {
		return time.Time{}, false
	}
	g.waiting.Add(1)
	defer g.waiting.Add(-1)
	t := time.NewTimer(g.wait)
	defer t.Stop()
	select {
	case g.slots <- struct{}{}:
		return g.now(), true
	case <-t.C:
		return time.Time{}, false
	}
}

// release gives a slot back and folds how long it was held into the
// moving average (weight 1/8: a change of pace shows within a few dozen
// handshakes).
func (g *handshakeGate) release(since time.Time) {
	d := int64(g.now().Sub(since))
	old := g.hold.Load()
	g.hold.Store(old + (d-old)/8) // a lost concurrent update only delays the average
	<-g.slots
}

// gatedCreds runs the server side of TLS handshakes through a gate.
type gatedCreds struct {
	credentials.TransportCredentials
	gate *handshakeGate
}

func (c gatedCreds) Clone() credentials.TransportCredentials {
	return gatedCreds{c.TransportCredentials.Clone(), c.gate}
}

// maxRecord bounds the first TLS record read before the handshake: a
// TLSCiphertext fragment is at most 2^14 + 2048 bytes.
const maxRecord = 1<<14 + 2048

func (c gatedCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	// The first record (the ClientHello), within the deadline gRPC set
	// on the connection for the whole handshake.
	var hdr [5]byte
	if _, err := io.ReadFull(raw, hdr[:]); err != nil {
		return nil, nil, fmt.Errorf("read TLS record header: %w", err)
	}
	first := hdr[:]
	gated := hdr[0] == 22 // handshake record; anything else fails in crypto/tls, ungated
	if gated {
		n := int(binary.BigEndian.Uint16(hdr[3:5]))
		if n > maxRecord {
			return nil, nil, errors.New("first TLS record too long")
		}
		first = make([]byte, 5+n)
		copy(first, hdr[:])
		if _, err := io.ReadFull(raw, first[5:]); err != nil {
			return nil, nil, fmt.Errorf("read ClientHello: %w", err)
		}
	}
	conn := &gatedConn{Conn: raw, pending: first, gate: c.gate}
	if gated {
		since, ok := c.gate.acquire()
		if !ok {
			c.gate.shed()
			return nil, nil, errHandshakeShed
		}
		conn.since = since
		conn.held.Store(true)
		defer conn.done()
	}
	return c.TransportCredentials.ServerHandshake(conn)
}

// gatedConn replays the bytes read before the handshake, and gives the
// handshake slot back at the server's first read after it wrote (it then
// waits for the client), or when the handshake ends.
type gatedConn struct {
	net.Conn
	pending []byte
	gate    *handshakeGate
	since   time.Time   // when the slot was taken
	held    atomic.Bool // a slot is held
	wrote   atomic.Bool
}

func (c *gatedConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	if c.held.Load() && c.wrote.Load() {
		c.done()
	}
	return c.Conn.Read(p)
}

func (c *gatedConn) Write(p []byte) (int, error) {
	if c.held.Load() {
		c.wrote.Store(true)
	}
	return c.Conn.Write(p)
}

// done gives the slot back, once.
func (c *gatedConn) done() {
	if c.held.CompareAndSwap(true, false) {
		c.gate.release(c.since)
	}
}
