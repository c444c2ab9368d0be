package ca_test

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"github.com/sigil-spiffe/sigil/internal/ca"
	"github.com/sigil-spiffe/sigil/internal/clock"
	"github.com/sigil-spiffe/sigil/internal/keys"
)

// waitArmed waits until the rotation loop has finished its pass and armed
// its next timer on the fake clock.
func waitArmed(t *testing.T, clk *clock.Fake) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for clk.Waiters() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("rotation loop did not re-arm its timer")
		}
		time.Sleep(time.Millisecond)
	}
}

func signedBy(leaf, ca *x509.Certificate) bool { return leaf.CheckSignatureFrom(ca) == nil }

func contains(certs []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range certs {
		if x.Equal(c) {
			return true
		}
	}
	return false
}

func (e *env) bundleCerts(t *testing.T) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for _, a := range e.storedBundle(t).X509Authorities {
		c, err := x509.ParseCertificate(a.ASN1)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

func (e *env) bundleKids(t *testing.T) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, k := range e.storedBundle(t).JWTKeys {
		out[k.KeyID] = true
	}
	return out
}

func TestRotation(t *testing.T) {
	const caTTL = 10 * time.Minute
	t0 := time.Now().Truncate(time.Second)
	clk := clock.NewFake(t0)
	store := newMemStore()
	km := keys.NewMemory()
	cfgOpt := func(c *ca.Config) { c.CATTL, c.X509SVIDTTL, c.JWTSVIDTTL = caTTL, time.Minute, time.Minute }
	e := newEnv(t, store, km, clk, cfgOpt)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.m.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v on cancel", err)
		}
	}()
	waitArmed(t, clk)
	advance := func(d time.Duration) {
		clk.Add(d)
		waitArmed(t, clk)
	}

	type issued struct {
		leaf *x509.Certificate
		by   *x509.Certificate
	}
	var all []issued
	// signNow signs an SVID with a TTL far beyond the CA's life, checks it
	// verifies and returns the CA that signed it.
	signNow := func(cands ...*x509.Certificate) *x509.Certificate {
		t.Helper()
		chain := e.sign(t, ca.X509SVIDParams{TTL: 100 * time.Hour})
		e.verify(t, chain, workload)
		for _, c := range cands {
			if signedBy(chain[0], c) {
				all = append(all, issued{chain[0], c})
				return c
			}
		}
		t.Fatal("SVID signed by none of the known CAs")
		return nil
	}
	jwtKid := func() string {
		t.Helper()
		tok, err := e.m.SignJWTSVID(context.Background(), ca.JWTSVIDParams{SPIFFEID: workload, Audience: []string{"aud"}, TTL: 100 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		k, claims := parseJWT(t, tok, e.jwtBundle(t), "aud", clk.Now())
		for _, key := range e.storedBundle(t).JWTKeys {
			if key.KeyID == k && claims.Expiry.Time().Unix() > key.ExpiresAt {
				t.Fatalf("JWT-SVID exp %s outlives its key (%d)", claims.Expiry.Time(), key.ExpiresAt)
			}
		}
		return k
	}

	// t0: one CA, one JWT key.
	auths := e.m.X509Authorities()
	if len(auths) != 1 || len(e.bundleCerts(t)) != 1 || len(e.bundleKids(t)) != 1 {
		t.Fatalf("at start: %d authorities, bundle %d certs %d keys", len(auths), len(e.bundleCerts(t)), len(e.bundleKids(t)))
	}
	caA := auths[0]
	signNow(caA)
	kidA := jwtKid()

	// Just past half-life: the next CA and JWT key are prepared and
	// published, but signing still uses the active ones.
	changesBefore := e.changes.Load()
	advance(caTTL/2 + time.Second)
	bundle := e.bundleCerts(t)
	if len(bundle) != 2 || !contains(bundle, caA) {
		t.Fatalf("after half-life: bundle has %d certs (caA present=%v), want 2", len(bundle), contains(bundle, caA))
	}
	if e.changes.Load() == changesBefore {
		t.Error("OnBundleChange not called when the prepared authority was published")
	}
	var caB *x509.Certificate
	for _, c := range bundle {
		if !c.Equal(caA) {
			caB = c
		}
	}
	checkSigningCert(t, caB)
	if len(e.m.X509Authorities()) != 2 {
		t.Fatalf("X509Authorities after prepare: %d, want 2", len(e.m.X509Authorities()))
	}
	if got := signNow(caA, caB); got != caA {
		t.Fatal("the prepared CA signed before activation")
	}
	kids := e.bundleKids(t)
	if len(kids) != 2 || !kids[kidA] {
		t.Fatalf("after half-life: JWT keys %v, want the active and a prepared one", kids)
	}
	if jwtKid() != kidA {
		t.Fatal("the prepared JWT key signed before activation")
	}
	var kidB string
	for k := range kids {
		if k != kidA {
			kidB = k
		}
	}

	// A restart now keeps both the active and the prepared authorities.
	r := newEnv(t, store, km, clk, cfgOpt)
	if ra := r.m.X509Authorities(); len(ra) != 2 || !contains(ra, caA) || !contains(ra, caB) {
		t.Fatal("restart during the prepared phase lost or replaced an authority")
	}
	if c := r.sign(t, ca.X509SVIDParams{}); !signedBy(c[0], caA) {
		t.Fatal("after restart the prepared CA signs before activation")
	}

	// Past 5/6 of the active lifetime: the prepared ones take over; the old
	// ones stay published.
	advance(caTTL/6*5 - caTTL/2)
	if got := signNow(caA, caB); got != caB {
		t.Fatal("the prepared CA was not activated at 5/6 of the active lifetime")
	}
	if jwtKid() != kidB {
		t.Fatal("the prepared JWT key was not activated")
	}
	if b := e.bundleCerts(t); len(b) != 2 || !contains(b, caA) || !contains(b, caB) {
		t.Fatal("after activation the old and new CAs must overlap in the bundle")
	}
	if k := e.bundleKids(t); !k[kidA] || !k[kidB] {
		t.Fatal("after activation the old and new JWT keys must overlap in the bundle")
	}
	// SVIDs the old CA signed still verify against the current bundle.
	for _, s := range all {
		if s.by.Equal(caA) && !clk.Now().After(s.leaf.NotAfter) {
			e.verify(t, []*x509.Certificate{s.leaf}, workload)
		}
	}

	// Past the old CA's expiry: it is pruned; signing continues.
	advance(caA.NotAfter.Sub(clk.Now()) + time.Second)
	bundle = e.bundleCerts(t)
	if contains(bundle, caA) || contains(e.m.X509Authorities(), caA) {
		t.Fatal("the expired CA is still published")
	}
	if !contains(bundle, caB) {
		t.Fatal("the active CA is missing from the bundle")
	}
	if e.bundleKids(t)[kidA] {
		t.Fatal("the expired JWT key is still published")
	}
	if got := signNow(caA, caB); got != caB {
		t.Fatal("signing after pruning did not use the active CA")
	}

	// Keep rotating through several generations: signing never stops, and
	// every SVID's signing CA is in the bundle and outlives it.
	for i := 0; i < 8; i++ {
		advance(caTTL / 4)
		chain := e.sign(t, ca.X509SVIDParams{TTL: 100 * time.Hour})
		paths := e.verify(t, chain, workload)
		root := paths[0][len(paths[0])-1]
		all = append(all, issued{chain[0], root})
		if n := len(e.bundleCerts(t)); n < 1 || n > 3 {
			t.Fatalf("bundle has %d authorities, want 1..3", n)
		}
		jwtKid()
	}
	for i, s := range all {
		if s.leaf.NotAfter.After(s.by.NotAfter) {
			t.Errorf("SVID %d expires at %s, after its CA (%s)", i, s.leaf.NotAfter, s.by.NotAfter)
		}
	}
}

func TestRestartAfterEverythingExpired(t *testing.T) {
	store := newMemStore()
	km := keys.NewMemory()
	clk := clock.NewFake(time.Now())
	opt := func(c *ca.Config) { c.CATTL = 10 * time.Minute }
	e1 := newEnv(t, store, km, clk, opt)
	old := e1.m.X509Authorities()[0]
	clk.Add(time.Hour)
	e2 := newEnv(t, store, km, clk, opt)
	auths := e2.m.X509Authorities()
	if len(auths) != 1 || auths[0].Equal(old) {
		t.Fatal("after the CA expired offline a new one must replace it")
	}
	if b := e2.bundleCerts(t); len(b) != 1 || !b[0].Equal(auths[0]) {
		t.Fatal("the expired CA was not pruned from the bundle")
	}
	e2.verify(t, e2.sign(t, ca.X509SVIDParams{}), workload)
}
