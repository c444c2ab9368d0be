package cache

import "time"

// jitterFrac is a number in [0, 0.1) derived from an SVID's validity
// period: a given SVID always gets the same value, SVIDs issued at
// different times get different ones, so renewals spread out.
func jitterFrac(notBefore, notAfter time.Time) float64 {
	h := uint64(notBefore.UnixNano())*0x9E3779B97F4A7C15 ^ uint64(notAfter.UnixNano())
	h ^= h >> 29
	return float64(h%1000) / 1000 * 0.10
}

// AvailabilityTargetRenewal is the policy for SPIRE's availability_target:
// an SVID is renewed once its remaining lifetime drops below the larger of
// half its lifetime (DefaultRenewal, jitter included) and target, so that
// right after each renewal the agent holds at least target of validity to
// ride out a server or agent outage. The target point is brought forward
// by a jitter of up to 10% of the lifetime beyond target.
//
// An SVID whose lifetime is not longer than target cannot meet it: it is
// renewed at half-life, as with DefaultRenewal (renewing it on every check
// would not help). ShorterThanTarget tells callers when to warn. A target
// of 0 or less is DefaultRenewal.
func AvailabilityTargetRenewal(target time.Duration) RenewalPolicy {
	if target <= 0 {
		return DefaultRenewal
	}
	return func(now, notBefore, notAfter time.Time) bool {
		life := notAfter.Sub(notBefore)
		if life <= target {
			return DefaultRenewal(now, notBefore, notAfter)
		}
		slack := life - target
		renewAt := notBefore.Add(slack - time.Duration(float64(slack)*jitterFrac(notBefore, notAfter)))
		return !now.Before(renewAt) || DefaultRenewal(now, notBefore, notAfter)
	}
}

// ShorterThanTarget reports whether an SVID valid from notBefore to
// notAfter is too short-lived to meet an availability target (it is then
// renewed at half-life).
func ShorterThanTarget(target time.Duration, notBefore, notAfter time.Time) bool {
	return target > 0 && notAfter.Sub(notBefore) <= target
}

// SVIDStats summarizes what the cache can serve at now: the number of
// entries holding an unexpired X509-SVID and the earliest NotAfter among
// them (zero when there are none).
func (c *Cache) SVIDStats(now time.Time) (count int, earliestExpiry time.Time) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for id, s := range c.svids {
		if _, ok := c.entries[id]; !ok {
			continue
		}
		na := s.notAfter()
		if !now.Before(na) {
			continue
		}
		count++
		if earliestExpiry.IsZero() || na.Before(earliestExpiry) {
			earliestExpiry = na
		}
	}
	return count, earliestExpiry
}

// MinRotationAge is the youngest an SVID may be (counted from its
// NotBefore, which servers backdate by a few seconds) before a renewal
// policy may call it due. Near the end of a CA's life the server shortens
// SVIDs to the CA's remaining lifetime; without a floor such an SVID would
// be due the moment it is issued and the agent would renew in a tight loop
// until the CA rotates (or, at a site cut off from its upstream, until its
// intermediate expires).
const MinRotationAge = 30 * time.Second

// WithMinAge wraps p so that no SVID is due before min(minAge, 90% of its
// lifetime) has passed since its NotBefore. The 90% cap keeps a very short
// SVID (an agent SVID shortened to a CA's last seconds, say) renewable
// before it expires: an agent whose own SVID expires cannot renew it at all.
// The result stays monotonic in now.
func WithMinAge(p RenewalPolicy, minAge time.Duration) RenewalPolicy {
	if p == nil {
		p = DefaultRenewal
	}
	return func(now, notBefore, notAfter time.Time) bool {
		floor := min(minAge, notAfter.Sub(notBefore)*9/10)
		if now.Before(notBefore.Add(floor)) {
			return false
		}
		return p(now, notBefore, notAfter)
	}
}
