package federation

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/datastore"
)

// TestAgentsToldAfterTheRefreshIsRecorded: when a fetched bundle changed,
// agents are woken (OnBundleChange) only once the fetch time is recorded,
// so the bundle they fetch then comes with its new refresh time (the
// bundle API sends it) instead of the previous one.
func TestAgentsToldAfterTheRefreshIsRecorded(t *testing.T) {
	p := newPeer(t, time.Second)
	store := openStore(t)
	var recorded atomic.Pointer[time.Time]
	m, err := NewManager(ManagerConfig{TrustDomain: localTD, Store: store, Static: []Relationship{spiffeRelationship(p)},
		OnBundleChange: func() {
			r, err := store.BundleRefreshes(context.Background())
			if err != nil {
				t.Error(err)
				return
			}
			at := r[peerTD.Name()]
			recorded.Store(&at)
		}, Intervals: fastIntervals, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.SetBundle(context.Background(), &datastore.Bundle{TrustDomain: peerTD.Name(), X509Authorities: []datastore.X509Authority{{ASN1: p.ca.Cert.Raw}}}); err != nil {
		t.Fatal(err)
	}
	started := time.Now().Truncate(time.Second)
	l := &local{store: store, m: m}
	l.run(t)
	eventually(t, "agents told of the fetched bundle", func() bool { return recorded.Load() != nil })
	if at := *recorded.Load(); at.Before(started) {
		t.Fatalf("when agents were told, the recorded refresh time was %v (the fetch began after %v)", at, started)
	}
}
