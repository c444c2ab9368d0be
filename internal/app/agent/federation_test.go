package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/agent/cache"
	"github.com/sigil-spiffe/sigil/internal/agent/manager"
)

// TestFederatedBundleAge: the metrics give each federated bundle's last
// update time (0 when unknown), and the degraded status text how old each
// is.
func TestFederatedBundleAge(t *testing.T) {
	now := time.Unix(1750000000, 0)
	updated := now.Add(-72 * time.Hour)
	st := manager.Status{
		State: manager.StateDegraded, DegradedSince: now.Add(-time.Hour), SVIDs: 1, EarliestSVIDExpiry: now.Add(time.Hour),
		FederatedBundles: []cache.BundleUpdate{
			{TrustDomain: spiffeid.RequireTrustDomainFromString("edge.test"), UpdatedAt: updated},
			{TrustDomain: spiffeid.RequireTrustDomainFromString("old.test")},
		},
	}
	got := scrape(t, st)
	if v, ok := got[`sigil_agent_federated_bundle_updated_timestamp_seconds{trust_domain="edge.test"}`]; !ok || v != float64(updated.Unix()) {
		t.Errorf("edge.test updated timestamp %v (present %v), want %d", v, ok, updated.Unix())
	}
	if v, ok := got[`sigil_agent_federated_bundle_updated_timestamp_seconds{trust_domain="old.test"}`]; !ok || v != 0 {
		t.Errorf("old.test (unknown) updated timestamp %v (present %v), want 0", v, ok)
	}

	ok, detail := readiness(st, now)
	want := "federated bundles: edge.test updated " + updated.UTC().Format(time.RFC3339) + " (72h0m0s ago), old.test update time unknown"
	if !ok || !strings.Contains(detail, want) {
		t.Fatalf("degraded status %v %q, want it to contain %q", ok, detail, want)
	}
	// Without federation the text says nothing about it.
	st.FederatedBundles = nil
	if _, detail := readiness(st, now); strings.Contains(detail, "federated") {
		t.Fatalf("degraded status without federation: %q", detail)
	}
}
