package cache_test

import (
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/clock"
)

// firstDue scans [nb, na] in steps and returns the first instant the policy
// reports renewal (na+step when it never does), failing if it is not
// monotonic.
func firstDue(t *testing.T, p cache.RenewalPolicy, nb, na time.Time, step time.Duration) time.Time {
	t.Helper()
	first := time.Time{}
	for at := nb; !at.After(na); at = at.Add(step) {
		due := p(at, nb, na)
		if first.IsZero() && due {
			first = at
		}
		if !first.IsZero() && !due {
			t.Fatalf("policy not monotonic: due at %s, not due at %s", first.Sub(nb), at.Sub(nb))
		}
	}
	if first.IsZero() {
		return na.Add(step)
	}
	return first
}

func TestAvailabilityTargetRenewal(t *testing.T) {
	day := 24 * time.Hour
	base := time.Unix(1750000000, 0)
	cases := []struct {
		name     string
		life     time.Duration
		target   time.Duration
		earliest time.Duration // renewal point window, from NotBefore
		latest   time.Duration
	}{
		// The target dominates: renewed with 7 days (plus jitter) left.
		{"target dominates", 8 * day, 7 * day, 8*day - 7*day - day/10, day},
		// Half-life comes first: max(half-life, target) is half-life.
		{"half-life dominates", 8 * day, day, 4*day - 8*day/10, 4 * day},
		// Lifetime shorter than the target: half-life, not every check.
		{"shorter than target", time.Hour, day, 30*time.Minute - 6*time.Minute, 30 * time.Minute},
		{"equal to target", day, day, 12*time.Hour - day/10, 12 * time.Hour},
		{"no target", 8 * day, 0, 4*day - 8*day/10, 4 * day},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := cache.AvailabilityTargetRenewal(tc.target)
			// Several SVIDs: the jitter differs per validity period.
			for i := range 20 {
				nb := base.Add(time.Duration(i) * 7919 * time.Second)
				na := nb.Add(tc.life)
				at := firstDue(t, p, nb, na, tc.life/2000)
				if d := at.Sub(nb); d < tc.earliest || d > tc.latest+tc.life/2000 {
					t.Fatalf("SVID %d (%s): due after %s, want within [%s, %s]", i, tc.life, d, tc.earliest, tc.latest)
				}
				if tc.target > 0 && tc.life > tc.target && na.Sub(at) < tc.target {
					t.Fatalf("SVID %d: renewed with %s left, want at least the target %s", i, na.Sub(at), tc.target)
				}
			}
		})
	}
}

func TestAvailabilityTargetZeroIsDefault(t *testing.T) {
	base := time.Unix(1750000000, 0)
	p := cache.AvailabilityTargetRenewal(0)
	for i := range 50 {
		nb := base.Add(time.Duration(i) * time.Hour)
		na := nb.Add(10 * time.Hour)
		for at := nb; at.Before(na); at = at.Add(7 * time.Minute) {
			if p(at, nb, na) != cache.DefaultRenewal(at, nb, na) {
				t.Fatalf("target 0 differs from DefaultRenewal at %s", at.Sub(nb))
			}
		}
	}
}

func TestShorterThanTarget(t *testing.T) {
	nb := time.Unix(1750000000, 0)
	for _, tc := range []struct {
		target, life time.Duration
		want         bool
	}{
		{0, time.Hour, false},
		{24 * time.Hour, time.Hour, true},
		{24 * time.Hour, 24 * time.Hour, true},
		{24 * time.Hour, 25 * time.Hour, false},
	} {
		if got := cache.ShorterThanTarget(tc.target, nb, nb.Add(tc.life)); got != tc.want {
			t.Errorf("ShorterThanTarget(%s, life %s) = %v, want %v", tc.target, tc.life, got, tc.want)
		}
	}
}

func TestNeedsSVIDWithAvailabilityTarget(t *testing.T) {
	start := time.Unix(1750000000, 0)
	clk := clock.NewFake(start)
	c := newCache(t, "", clk)
	a := newCA(t, td)
	if err := c.SetEntries([]*cache.Entry{ent("e", "/w", start, uid0)}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetX509SVIDs(map[string]*cache.X509SVID{"e": a.svid(t, id("/w"), start, start.Add(8*24*time.Hour))}); err != nil {
		t.Fatal(err)
	}
	p := cache.AvailabilityTargetRenewal(7 * 24 * time.Hour)
	// Half a day in: 7.5 days left, above the target.
	if due := c.NeedsSVID(start.Add(12*time.Hour), p); len(due) != 0 {
		t.Fatalf("renewal due with 7.5 days left: %v", entryIDs(due))
	}
	// One day in: 7 days left, at the target (DefaultRenewal would wait
	// until about day 4).
	if due := c.NeedsSVID(start.Add(24*time.Hour), p); entryIDs(due) != "e" {
		t.Fatalf("renewal not due with 7 days left: %q", entryIDs(due))
	}
	if due := c.NeedsSVID(start.Add(24*time.Hour), cache.DefaultRenewal); len(due) != 0 {
		t.Fatalf("DefaultRenewal due after 1 of 8 days: %v", entryIDs(due))
	}
}

func TestSVIDStats(t *testing.T) {
	start := time.Unix(1750000000, 0)
	clk := clock.NewFake(start)
	c := newCache(t, "", clk)
	a := newCA(t, td)
	if n, e := c.SVIDStats(start); n != 0 || !e.IsZero() {
		t.Fatalf("empty cache: %d SVIDs, earliest %s", n, e)
	}
	if err := c.SetEntries([]*cache.Entry{
		ent("a", "/a", start, uid0), ent("b", "/b", start, uid0), ent("c", "/c", start, uid1),
	}); err != nil {
		t.Fatal(err)
	}
	// c has no SVID.
	if err := c.SetX509SVIDs(map[string]*cache.X509SVID{
		"a": a.svid(t, id("/a"), start, start.Add(2*time.Hour)),
		"b": a.svid(t, id("/b"), start, start.Add(time.Hour)),
	}); err != nil {
		t.Fatal(err)
	}
	check := func(at time.Time, wantN int, wantE time.Time) {
		t.Helper()
		n, e := c.SVIDStats(at)
		if n != wantN || !e.Equal(wantE) {
			t.Fatalf("at +%s: %d SVIDs, earliest %s; want %d, %s", at.Sub(start), n, e, wantN, wantE)
		}
	}
	check(start, 2, start.Add(time.Hour))
	check(start.Add(time.Hour-time.Nanosecond), 2, start.Add(time.Hour))
	// At the exact NotAfter an SVID no longer counts.
	check(start.Add(time.Hour), 1, start.Add(2*time.Hour))
	check(start.Add(2*time.Hour), 0, time.Time{})
	// A removed entry's SVID does not count.
	if err := c.SetEntries([]*cache.Entry{ent("b", "/b", start, uid0)}); err != nil {
		t.Fatal(err)
	}
	check(start, 1, start.Add(time.Hour))
}

func TestWithMinAge(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := cache.WithMinAge(cache.DefaultRenewal, cache.MinRotationAge)
	// An SVID shortened to 60 s (10 s backdated, CA about to rotate): the
	// default policy calls it due 30 s after NotBefore, i.e. 20 s after it
	// was issued; an SVID shortened to 15 s would be due at once. The floor
	// holds both back until min(MinRotationAge, 90% of the lifetime).
	for _, tc := range []struct {
		life, due time.Duration
	}{
		{60 * time.Second, cache.MinRotationAge},
		{15 * time.Second, 13500 * time.Millisecond},
		{2 * time.Second, 1800 * time.Millisecond},
	} {
		na := nb.Add(tc.life)
		if p(nb.Add(tc.due-time.Millisecond), nb, na) {
			t.Errorf("life %v: due before %v", tc.life, tc.due)
		}
		if !p(nb.Add(tc.due), nb, na) {
			t.Errorf("life %v: not due at %v", tc.life, tc.due)
		}
		if tc.due >= tc.life {
			t.Errorf("life %v: due only at expiry", tc.life)
		}
	}
	// A normal 1 h SVID keeps its half-life schedule.
	na := nb.Add(time.Hour)
	for _, off := range []time.Duration{0, time.Minute, 20 * time.Minute, 29 * time.Minute, 31 * time.Minute, 59 * time.Minute} {
		now := nb.Add(off)
		if got, want := p(now, nb, na), cache.DefaultRenewal(now, nb, na); got != want {
			t.Errorf("at +%v: got %v, want %v", off, got, want)
		}
	}
}
