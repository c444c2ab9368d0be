package manager

import (
	"math/rand/v2"
	"time"
)

// backoff is a capped exponential backoff with full jitter in [d/2, d].
type backoff struct {
	min, max time.Duration
	cur      time.Duration
}

func newBackoff(minDelay, maxDelay time.Duration) *backoff {
	return &backoff{min: minDelay, max: maxDelay}
}

// next returns the next delay and doubles the base (up to max).
func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(b.cur*2, b.max)
	}
	half := b.cur / 2
	return half + rand.N(half+1)
}

// reset starts again from min.
func (b *backoff) reset() { b.cur = 0 }
