package cache

// Watch returns a channel that receives a signal after every change that
// may alter what the cache serves (entries, X509-SVIDs, bundles) and, while
// Run runs, when a served SVID expires. Signals coalesce: one pending signal
// stands for any number of changes, so a reader re-reads the state it cares
// about after each one. It is for consumers that select by something other
// than a workload's selectors (e.g. filesystem delivery by SPIFFE ID). Call
// stop when done; the channel is never closed.
func (c *Cache) Watch() (changes <-chan struct{}, stop func()) {
	ch := make(chan struct{}, 1)
	c.mu.Lock()
	if c.watchers == nil {
		c.watchers = make(map[chan struct{}]struct{})
	}
	c.watchers[ch] = struct{}{}
	c.mu.Unlock()
	return ch, func() {
		c.mu.Lock()
		delete(c.watchers, ch)
		c.mu.Unlock()
	}
}

// signalWatchers wakes every Watch channel without blocking.
func (c *Cache) signalWatchers() {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for ch := range c.watchers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
