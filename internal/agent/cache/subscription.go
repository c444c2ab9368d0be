package cache

import (
	"sync"

	"github.com/sigil-spiffe/sigil/internal/selector"
)

// Subscription delivers full WorkloadUpdates for one workload's selectors.
type Subscription struct {
	c   *Cache
	set selector.Set
	ch  chan *WorkloadUpdate

	mu     sync.Mutex
	last   string
	closed bool
}

// Subscribe registers a workload's selector set. The current state is
// available on Updates at once; later states follow on every change that
// affects it. Call Close when done.
func (c *Cache) Subscribe(set selector.Set) *Subscription {
	cp := make(selector.Set, len(set))
	for s := range set {
		cp[s] = struct{}{}
	}
	s := &Subscription{c: c, set: cp, ch: make(chan *WorkloadUpdate, 1)}
	c.mu.Lock()
	c.subs[s] = struct{}{}
	c.mu.Unlock()
	s.refresh(true)
	return s
}

// Updates returns the channel of states. Only the latest undelivered state
// is kept: a reader that falls behind skips intermediate states. The
// channel is never closed; stop reading after Close.
func (s *Subscription) Updates() <-chan *WorkloadUpdate { return s.ch }

// Close unregisters the subscription.
func (s *Subscription) Close() {
	s.c.mu.Lock()
	delete(s.c.subs, s)
	s.c.mu.Unlock()
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}

// refresh computes the subscriber's state and delivers it when it differs
// from the last one delivered (or always, when force is set).
func (s *Subscription) refresh(force bool) {
	// Building under s.mu means concurrent refreshes deliver in order and
	// the last one delivered reflects the latest state.
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	u, fp := s.c.buildUpdate(s.set, s.c.clk.Now())
	if !force && fp == s.last {
		return
	}
	s.last = fp
	// Replace an undelivered state with the newer one; the send cannot
	// block because this is the only sender and it holds s.mu.
	select {
	case <-s.ch:
	default:
	}
	s.ch <- u
}

func (c *Cache) notifyAll() {
	c.signalWatchers()
	c.mu.RLock()
	subs := make([]*Subscription, 0, len(c.subs))
	for s := range c.subs {
		subs = append(subs, s)
	}
	c.mu.RUnlock()
	for _, s := range subs {
		s.refresh(false)
	}
}
