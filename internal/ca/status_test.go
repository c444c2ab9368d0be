package ca_test

import (
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/ca"
	"github.com/sigil-spiffe/sigil/internal/clock"
)

// ActiveValidity reports the signing X.509 CA's certificate lifetime and
// the signing JWT key's, and follows an activation.
func TestActiveValidity(t *testing.T) {
	const caTTL = 10 * time.Minute
	clk := clock.NewFake(time.Now().Truncate(time.Second))
	e := newEnv(t, nil, nil, clk, func(c *ca.Config) { c.CATTL, c.X509SVIDTTL, c.JWTSVIDTTL = caTTL, time.Minute, time.Minute })
	x, j := e.m.ActiveValidity()
	auths := e.m.X509Authorities()
	if len(auths) != 1 || !x.NotAfter.Equal(auths[0].NotAfter) || !x.NotBefore.Equal(auths[0].NotBefore) {
		t.Fatalf("X.509 validity %v, want the CA certificate's %s..%s", x, auths[0].NotBefore, auths[0].NotAfter)
	}
	if j.NotAfter.IsZero() || !j.NotAfter.After(clk.Now()) || j.NotAfter.Sub(j.NotBefore) > caTTL+time.Minute {
		t.Fatalf("JWT key validity %v", j)
	}
	var zero ca.Validity
	if fresh, err := ca.New(ca.Config{TrustDomain: td, Keys: e.keys, Journal: e.store, Bundles: e.store}); err != nil {
		t.Fatal(err)
	} else if x, j := fresh.ActiveValidity(); x != zero || j != zero {
		t.Fatalf("before Init: %v %v, want zero", x, j)
	}
}
