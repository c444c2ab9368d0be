package manager_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/agent/manager"
	"github.com/sigil-spiffe/sigil/internal/clock"
)

// logRecorder is a slog.Handler that keeps every record.
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec.Clone())
	return nil
}
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }

// find returns the records at level whose message contains msg.
func (r *logRecorder) find(level slog.Level, msg string) []slog.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []slog.Record
	for _, rec := range r.recs {
		if rec.Level == level && strings.Contains(rec.Message, msg) {
			out = append(out, rec)
		}
	}
	return out
}

func attr(rec slog.Record, key string) slog.Value {
	var v slog.Value
	rec.Attrs(func(a slog.Attr) bool {
		if a.Key == key {
			v = a.Value
			return false
		}
		return true
	})
	return v
}

func TestStateDegradedRemindersAndExpired(t *testing.T) {
	clk := clock.NewFake(time.Now())
	srv := newTestServer(t, serverOpts{clock: clk})
	token, agentID := srv.createToken()
	wl := spiffeid.RequireFromPath(td, "/workload/state")
	srv.createEntry(agentID, wl.Path(), "5100")
	rec := &logRecorder{}
	a := startAgent(t, srv, t.TempDir(), agentOpts{token: token, clock: clk, log: slog.New(rec)})
	leaf := a.waitIdentity("5100", wl).SVID[0]

	eventually(t, "connected state", func() bool { return a.m.Status().State == manager.StateConnected })
	if st := a.m.Status(); st.SVIDs != 1 || !st.EarliestSVIDExpiry.Equal(leaf.NotAfter) {
		t.Fatalf("connected status: %d SVIDs expiring %s, want 1 expiring %s", st.SVIDs, st.EarliestSVIDExpiry, leaf.NotAfter)
	}

	srv.stop()
	eventually(t, "degraded state", func() bool { return a.m.Status().State == manager.StateDegraded })
	var warn slog.Record
	eventually(t, "degraded warning", func() bool {
		w := rec.find(slog.LevelWarn, "Agent state: degraded")
		if len(w) > 0 {
			warn = w[0]
		}
		return len(w) > 0
	})
	if got := attr(warn, "earliest_svid_expiry").Time(); !got.Equal(leaf.NotAfter) {
		t.Fatalf("degraded warning: earliest_svid_expiry %s, want %s", got, leaf.NotAfter)
	}
	since := attr(warn, "degraded_since").Time()
	if since.IsZero() || !since.Equal(a.m.Status().DegradedSince) {
		t.Fatalf("degraded warning: degraded_since %s, status says %s", since, a.m.Status().DegradedSince)
	}

	// One reminder per interval, however often the manager retries
	// (every clock step fires its backoff timer and wakes the reporter).
	reminders := func() int { return len(rec.find(slog.LevelWarn, "still degraded")) }
	for i := 1; i <= 2; i++ {
		for range 10 {
			clk.Add(time.Minute)
			time.Sleep(2 * time.Millisecond) // let retries run between steps
		}
		eventually(t, "reminder", func() bool { return reminders() >= i })
	}

	// At the SVID's exact NotAfter nothing is left to serve.
	clk.Set(leaf.NotAfter)
	eventually(t, "expired state", func() bool { return a.m.Status().State == manager.StateExpired })
	eventually(t, "expired error", func() bool { return len(rec.find(slog.LevelError, "Agent state: expired")) == 1 })
	if st := a.m.Status(); st.SVIDs != 0 || !st.EarliestSVIDExpiry.IsZero() {
		t.Fatalf("expired status: %d SVIDs, earliest %s", st.SVIDs, st.EarliestSVIDExpiry)
	}
	if n := reminders(); n != 2 {
		t.Fatalf("%d degraded reminders over 20 minutes at a 10 minute interval, want 2", n)
	}
	if n := len(rec.find(slog.LevelWarn, "Agent state: degraded")); n != 1 {
		t.Fatalf("entered degraded %d times, want 1", n)
	}
}

func TestStateReconnectLogged(t *testing.T) {
	srv := newTestServer(t, serverOpts{})
	token, agentID := srv.createToken()
	wl := spiffeid.RequireFromPath(td, "/workload/reconnect")
	srv.createEntry(agentID, wl.Path(), "5200")
	rec := &logRecorder{}
	a := startAgent(t, srv, t.TempDir(), agentOpts{token: token, log: slog.New(rec)})
	a.waitIdentity("5200", wl)
	eventually(t, "connected state", func() bool { return a.m.Status().State == manager.StateConnected })
	if n := len(rec.find(slog.LevelInfo, "Agent state: connected")); n != 0 {
		t.Fatalf("first connection logged as a reconnection (%d)", n)
	}

	srv.stop()
	eventually(t, "degraded warning", func() bool { return len(rec.find(slog.LevelWarn, "Agent state: degraded")) == 1 })
	srv.start()
	eventually(t, "reconnected line", func() bool {
		r := rec.find(slog.LevelInfo, "Agent state: connected")
		return len(r) == 1 && attr(r[0], "previous_state").String() == string(manager.StateDegraded)
	})
	if st := a.m.Status(); st.State != manager.StateConnected || !st.DegradedSince.IsZero() {
		t.Fatalf("status after reconnection: %+v", st)
	}
}

func TestFreshAgentWithoutServerIsExpired(t *testing.T) {
	srv := newTestServer(t, serverOpts{})
	token, _ := srv.createToken()
	srv.stop()
	rec := &logRecorder{}
	a := startAgent(t, srv, t.TempDir(), agentOpts{token: token, log: slog.New(rec)})
	eventually(t, "expired error", func() bool { return len(rec.find(slog.LevelError, "Agent state: expired")) == 1 })
	if st := a.m.Status(); st.State != manager.StateExpired || st.Connected || st.SVIDs != 0 {
		t.Fatalf("status: %+v", st)
	}
}

func TestAvailabilityTargetRenewsEarly(t *testing.T) {
	// 1h SVIDs (workload and agent) and a 40 minute target: renewed once
	// less than 40 minutes are left, i.e. after 18-20 minutes, long before
	// the half-life renewal (24-30 minutes).
	clk := clock.NewFake(time.Now())
	srv := newTestServer(t, serverOpts{agentTTL: time.Hour, clock: clk})
	token, agentID := srv.createToken()
	wl := spiffeid.RequireFromPath(td, "/workload/target")
	srv.createEntry(agentID, wl.Path(), "5300")
	rec := &logRecorder{}
	a := startAgent(t, srv, t.TempDir(), agentOpts{token: token, clock: clk, log: slog.New(rec), availabilityTarget: 40 * time.Minute})
	before := a.waitIdentity("5300", wl).SVID[0]
	firstAgent := a.m.AgentSVID().Certificates[0]
	if n := len(rec.find(slog.LevelWarn, "lives no longer than availability_target")); n != 0 {
		t.Fatalf("%d short-lifetime warnings for SVIDs longer than the target", n)
	}

	clk.Add(21 * time.Minute)
	a.waitUpdate("5300", func(u *cache.WorkloadUpdate) bool {
		return len(u.Identities) == 1 && u.Identities[0].SVID[0].SerialNumber.Cmp(before.SerialNumber) != 0
	})
	eventually(t, "renewed agent SVID", func() bool {
		return a.m.AgentSVID().Certificates[0].SerialNumber.Cmp(firstAgent.SerialNumber) != 0
	})
	if left := a.m.AgentSVID().Certificates[0].NotAfter.Sub(clk.Now()); left < 40*time.Minute {
		t.Fatalf("renewed agent SVID has %s left, want at least the target", left)
	}
}

func TestShortLivedSVIDsWarnedOnce(t *testing.T) {
	// Target 2h, SVIDs 1h: renewed at half-life, warned once each.
	clk := clock.NewFake(time.Now())
	srv := newTestServer(t, serverOpts{agentTTL: time.Hour, clock: clk})
	token, agentID := srv.createToken()
	wl := spiffeid.RequireFromPath(td, "/workload/short")
	srv.createEntry(agentID, wl.Path(), "5400")
	rec := &logRecorder{}
	a := startAgent(t, srv, t.TempDir(), agentOpts{token: token, clock: clk, log: slog.New(rec), availabilityTarget: 2 * time.Hour})
	before := a.waitIdentity("5400", wl).SVID[0]
	firstAgent := a.m.AgentSVID().Certificates[0]
	warnings := func() []slog.Record { return rec.find(slog.LevelWarn, "lives no longer than availability_target") }
	eventually(t, "two warnings", func() bool { return len(warnings()) == 2 })

	// Not renewed before the jittered half-life (>= 24 minutes).
	clk.Add(20 * time.Minute)
	if s, _ := a.cache.X509SVID(a.cache.Entries()[0].ID); s.Chain[0].SerialNumber.Cmp(before.SerialNumber) != 0 {
		t.Fatal("short-lived SVID renewed before its half-life")
	}
	clk.Add(15 * time.Minute)
	a.waitUpdate("5400", func(u *cache.WorkloadUpdate) bool {
		return len(u.Identities) == 1 && u.Identities[0].SVID[0].SerialNumber.Cmp(before.SerialNumber) != 0
	})
	eventually(t, "renewed agent SVID", func() bool {
		return a.m.AgentSVID().Certificates[0].SerialNumber.Cmp(firstAgent.SerialNumber) != 0
	})
	if w := warnings(); len(w) != 2 {
		t.Fatalf("%d short-lifetime warnings after renewals, want 2 (one per SVID)", len(w))
	}
	var sawEntry bool
	for _, w := range warnings() {
		if attr(w, "spiffe_id").String() == wl.String() && attr(w, "entry_id").String() != "" {
			sawEntry = true
		}
	}
	if !sawEntry {
		t.Fatal("no warning names the workload entry")
	}
}
