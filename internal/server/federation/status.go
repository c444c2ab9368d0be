package federation

import "time"

// Status is what a relationship's refresher knows: for the trustdomain
// API (and `federation show`), logs and metrics.
type Status struct {
	Relationship Relationship
	// LastAttempt is when the last fetch started; LastSuccess when the
	// bundle was last fetched (changed or not; kept across restarts); zero
	// when never.
	LastAttempt, LastSuccess time.Time
	// LastError is the last failure's message, LastErrorAt its time (kept
	// after a later success).
	LastError   string
	LastErrorAt time.Time
	// ConsecutiveFailures counts the failures since the last success,
	// since FailingSince.
	ConsecutiveFailures int
	FailingSince        time.Time
	// NextAttempt is when the next fetch is due.
	NextAttempt time.Time
	// Interval is the refresh interval in use (the peer's refresh hint,
	// bounded).
	Interval time.Duration
	// Attempts, Failures and Updates count fetches, failed fetches and
	// fetches that changed the stored bundle since the server started.
	Attempts, Failures, Updates uint64
	// Now is when the status was taken.
	Now time.Time
}

// BundleAge is how long ago the bundle was last fetched from its endpoint
// (ok false: never).
func (s Status) BundleAge() (time.Duration, bool) {
	if s.LastSuccess.IsZero() {
		return 0, false
	}
	return max(s.Now.Sub(s.LastSuccess), 0), true
}
