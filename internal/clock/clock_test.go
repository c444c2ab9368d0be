package clock

import (
	"testing"
	"time"
)

func TestFakeFiresInOrderAndOnlyWhenDue(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f := NewFake(start)
	late := f.After(2 * time.Minute)
	early := f.After(time.Minute)
	now := f.After(0)
	select {
	case got := <-now:
		if !got.Equal(start) {
			t.Errorf("After(0) fired with %v", got)
		}
	default:
		t.Fatal("After(0) did not fire at once")
	}
	if f.Waiters() != 2 {
		t.Fatalf("Waiters = %d, want 2", f.Waiters())
	}
	f.Add(59 * time.Second)
	select {
	case <-early:
		t.Fatal("fired early")
	default:
	}
	f.Add(time.Second)
	if got := <-early; !got.Equal(start.Add(time.Minute)) {
		t.Errorf("early fired with %v", got)
	}
	select {
	case <-late:
		t.Fatal("late timer fired at 1m")
	default:
	}
	f.Set(start) // never backwards
	if !f.Now().Equal(start.Add(time.Minute)) {
		t.Errorf("Set moved the clock backwards to %v", f.Now())
	}
	f.Add(time.Hour)
	<-late
	if f.Waiters() != 0 {
		t.Errorf("Waiters = %d after all fired", f.Waiters())
	}
}

func TestOrReal(t *testing.T) {
	if _, ok := OrReal(nil).(Real); !ok {
		t.Error("OrReal(nil) is not the real clock")
	}
	f := NewFake(time.Now())
	if OrReal(f) != Clock(f) {
		t.Error("OrReal replaced a given clock")
	}
}
