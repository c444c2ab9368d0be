package cache_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

func updates(c *cache.Cache) map[spiffeid.TrustDomain]time.Time {
	out := make(map[spiffeid.TrustDomain]time.Time)
	for _, u := range c.FederatedBundleUpdates() {
		out[u.TrustDomain] = u.UpdatedAt
	}
	return out
}

// TestFederatedBundleUpdateTimes: a federated bundle's update time is the
// refresh time the server reported, or when its content arrived; an
// unchanged bundle keeps its time unless the server reports a new refresh
// (which notifies no workload); the times survive a restart, so an agent
// restarted while cut off still reports how old its bundles are.
func TestFederatedBundleUpdateTimes(t *testing.T) {
	dir := t.TempDir()
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	c := newCache(t, dir, clk)
	own, partner := newCA(t, td), newCA(t, fedTD)
	if err := c.SetBundle(own.bundle(td)); err != nil {
		t.Fatal(err)
	}
	e := ent("1", "/one", clk.Now(), uid0)
	e.FederatesWith = []spiffeid.TrustDomain{fedTD}
	if err := c.SetEntries([]*cache.Entry{e}); err != nil {
		t.Fatal(err)
	}
	sub := c.Subscribe(selector.NewSet(uid0))
	defer sub.Close()
	recv(t, sub)

	// No server-reported refresh: the time the content arrived.
	arrived := clk.Now()
	if err := c.SetBundle(partner.bundle(fedTD)); err != nil {
		t.Fatal(err)
	}
	recv(t, sub)
	if got := c.FederatedBundleUpdates(); len(got) != 1 || got[0].TrustDomain != fedTD || !got[0].UpdatedAt.Equal(arrived) {
		t.Fatalf("federated bundle updates %+v, want only %s at %s (our own bundle is not listed)", got, fedTD, arrived)
	}
	// The same content later, still with no report: unchanged.
	clk.Add(time.Hour)
	if err := c.SetBundle(partner.bundle(fedTD)); err != nil {
		t.Fatal(err)
	}
	if got := updates(c)[fedTD]; !got.Equal(arrived) {
		t.Fatalf("unchanged bundle: updated at %s, want still %s", got, arrived)
	}

	// The server reports it refreshed the same content 10 minutes ago: a
	// new update time, persisted, and no workload update.
	refreshed := clk.Now().Add(-10 * time.Minute)
	if err := c.SetBundleRefreshed(partner.bundle(fedTD), refreshed); err != nil {
		t.Fatal(err)
	}
	if got := updates(c)[fedTD]; !got.Equal(refreshed) {
		t.Fatalf("after a reported refresh: updated at %s, want %s", got, refreshed)
	}
	noUpdate(t, sub)
	// A refresh reported in the future (clock skew) counts as now.
	if err := c.SetBundleRefreshed(partner.bundle(fedTD), clk.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got := updates(c)[fedTD]; !got.Equal(clk.Now()) {
		t.Fatalf("refresh reported in the future: updated at %s, want now %s", got, clk.Now())
	}
	refreshed = clk.Now()

	// Days later the agent restarts, cut off: the time is restored.
	clk.Add(72 * time.Hour)
	restored := newCache(t, dir, clk)
	if err := restored.Load(); err != nil {
		t.Fatal(err)
	}
	if got := updates(restored)[fedTD]; !got.Equal(refreshed) {
		t.Fatalf("restored update time %s, want %s", got, refreshed)
	}
	if _, ok := restored.Bundle(fedTD); !ok {
		t.Fatal("federated bundle not restored")
	}

	// A new content is updated when it arrives (with no report).
	rotated := partner.bundle(fedTD)
	rotated.AddX509Authority(own.Cert)
	if err := restored.SetBundle(rotated); err != nil {
		t.Fatal(err)
	}
	if got := updates(restored)[fedTD]; !got.Equal(clk.Now()) {
		t.Fatalf("rotated bundle: updated at %s, want now %s", got, clk.Now())
	}
}

// TestBundleUpdateTimeUnknownInOldFile: a cache file written before update
// times were persisted loads with the time unknown (zero); the next sync,
// even of an unchanged bundle, records one.
func TestBundleUpdateTimeUnknownInOldFile(t *testing.T) {
	dir := t.TempDir()
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	c := newCache(t, dir, clk)
	partner := newCA(t, fedTD)
	if err := c.SetBundle(partner.bundle(fedTD)); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, cache.FileName)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]json.RawMessage
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatal(err)
	}
	if _, ok := st["bundles_updated_at"]; !ok {
		t.Fatalf("the cache file has no bundles_updated_at: %s", raw)
	}
	delete(st, "bundles_updated_at")
	if raw, err = json.Marshal(st); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}

	old := newCache(t, dir, clk)
	if err := old.Load(); err != nil {
		t.Fatal(err)
	}
	if got, ok := updates(old)[fedTD]; !ok || !got.IsZero() {
		t.Fatalf("update time from an old file: %s (listed %v), want zero", got, ok)
	}
	clk.Add(time.Minute)
	if err := old.SetBundle(partner.bundle(fedTD)); err != nil {
		t.Fatal(err)
	}
	if got := updates(old)[fedTD]; !got.Equal(clk.Now()) {
		t.Fatalf("after a sync: updated at %s, want %s", got, clk.Now())
	}
}

// TestNewBundleWithStaleRefreshTime: new content reported with the
// previous content's refresh time (the server's record lagging the bundle
// it serves) is current as of its arrival, not as old as the previous one.
func TestNewBundleWithStaleRefreshTime(t *testing.T) {
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	c := newCache(t, "", clk)
	partner := newCA(t, fedTD)
	refreshed := clk.Now().Add(-time.Hour)
	if err := c.SetBundleRefreshed(partner.bundle(fedTD), refreshed); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Minute)
	rotated := partner.bundle(fedTD)
	rotated.AddX509Authority(newCA(t, fedTD).Cert)
	if err := c.SetBundleRefreshed(rotated, refreshed); err != nil {
		t.Fatal(err)
	}
	if got := updates(c)[fedTD]; !got.Equal(clk.Now()) {
		t.Fatalf("new content with the old refresh time: updated at %s, want its arrival %s", got, clk.Now())
	}
	// A newer report still wins.
	clk.Add(time.Minute)
	later := clk.Now().Add(-10 * time.Second)
	if err := c.SetBundleRefreshed(partner.bundle(fedTD), later); err != nil {
		t.Fatal(err)
	}
	if got := updates(c)[fedTD]; !got.Equal(later) {
		t.Fatalf("new content with a newer refresh time: updated at %s, want %s", got, later)
	}
}
