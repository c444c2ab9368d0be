package testutil

import (
	"context"
	"errors"
	"net"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// TestDialInRestoresTheThread: DialIn dials from inside the namespace (a
// closed port on the namespace's own address is refused, where the
// test's namespace has no route to it) and switches the thread back to
// the test's namespace. A thread left in the namespace would have to
// exit, and exiting SIGKILLs the processes it forked (Pdeathsig): agents
// started by a test died silently after a scrape of their metrics.
func TestDialInRestoresTheThread(t *testing.T) {
	p := NewPartition(t) // skips without root, ip and nft
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type result struct {
		before, after string
		err           error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var r result
		r.before, _ = os.Readlink("/proc/thread-self/ns/net")
		var c net.Conn
		c, r.err = dialInThread(ctx, p.AgentNS, net.JoinHostPort(p.AgentIP, "1"))
		if c != nil {
			_ = c.Close()
		}
		r.after, _ = os.Readlink("/proc/thread-self/ns/net")
		ch <- r
	}()
	r := <-ch
	if !errors.Is(r.err, syscall.ECONNREFUSED) {
		t.Fatalf("dial a closed port of %s from its namespace: %v, want connection refused", p.AgentIP, r.err)
	}
	if r.before == "" || r.after != r.before {
		t.Fatalf("the dialing thread is in network namespace %q after DialIn, was in %q", r.after, r.before)
	}
}
