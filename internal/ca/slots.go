package ca

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// authority is what the slot logic needs of an X.509 CA or a JWT key.
type authority interface {
	comparable
	// validity is the authority's lifetime (NotBefore, NotAfter).
	validity() (time.Time, time.Time)
	// key is the key-manager ID of its private key ("" for old entries).
	key() string
}

// slots holds the active authority (signs now), the prepared one (published,
// not signing yet) and old ones (published until they expire).
type slots[A authority] struct {
	active, next A
	old          []A
}

func (s *slots[A]) each(f func(A)) {
	var zero A
	if s.active != zero {
		f(s.active)
	}
	if s.next != zero {
		f(s.next)
	}
	for _, o := range s.old {
		f(o)
	}
}

// prepareAt is when the next authority is prepared: half the lifetime.
func prepareAt[A authority](a A) time.Time {
	nb, na := a.validity()
	return nb.Add(na.Sub(nb) / 2)
}

// activateAt is when the prepared authority takes over: 5/6 of the lifetime.
func activateAt[A authority](a A) time.Time {
	nb, na := a.validity()
	return nb.Add(na.Sub(nb) / 6 * 5)
}

func expired[A authority](a A, now time.Time) bool {
	_, na := a.validity()
	return !now.Before(na)
}

// otherSlot returns the key ID (of base-A / base-B) not used by inUse.
func otherSlot(base, inUse string) string {
	if inUse == base+"-A" {
		return base + "-B"
	}
	return base + "-A"
}

// step advances one slot set to time now. create makes (and publishes) a new
// authority under the given key ID. It returns the new slot set and whether
// it changed.
func step[A authority](now time.Time, s slots[A], base string, create func(keyID string) (A, error)) (slots[A], bool, error) {
	var zero A
	changed := false
	retire := func(a A) {
		if a != zero && !expired(a, now) {
			s.old = append(s.old, a)
		}
	}
	if s.active == zero || expired(s.active, now) {
		if s.next != zero && !expired(s.next, now) {
			retire(s.active)
			s.active, s.next = s.next, zero
		} else {
			var avoid string
			if s.active != zero {
				avoid = s.active.key()
			}
			a, err := create(otherSlot(base, avoid))
			if err != nil {
				return s, changed, err
			}
			retire(s.active)
			s.active, s.next = a, zero
		}
		changed = true
	}
	if s.next == zero && !now.Before(prepareAt(s.active)) {
		n, err := create(otherSlot(base, s.active.key()))
		if err != nil {
			return s, changed, err
		}
		s.next = n
		changed = true
	}
	if s.next != zero && !now.Before(activateAt(s.active)) {
		retire(s.active)
		s.active, s.next = s.next, zero
		changed = true
	}
	kept := s.old[:0]
	for _, o := range s.old {
		if !expired(o, now) {
			kept = append(kept, o)
		}
	}
	if len(kept) != len(s.old) {
		changed = true
	}
	clear(s.old[len(kept):])
	s.old = kept
	return s, changed, nil
}

// nextEvent returns the earliest time at which step would change s.
func nextEvent[A authority](s slots[A]) time.Time {
	var zero A
	var t time.Time
	min := func(c time.Time) {
		if t.IsZero() || c.Before(t) {
			t = c
		}
	}
	if s.active == zero {
		return time.Time{}
	}
	_, na := s.active.validity()
	min(na)
	if s.next == zero {
		min(prepareAt(s.active))
	} else {
		min(activateAt(s.active))
	}
	for _, o := range s.old {
		_, na := o.validity()
		min(na)
	}
	return t
}

// x509CA is one X.509 signing CA.
type x509CA struct {
	keyID  string
	signer crypto.Signer // nil for old entries
	cert   *x509.Certificate
	// upstream intermediates after cert (empty when self-signed)
	upstreamChain []*x509.Certificate
	// chainAbove is what SVIDs carry after their leaf: cert and the
	// upstream intermediates, or nothing when cert is a self-signed root.
	chainAbove []*x509.Certificate
	roots      []*x509.Certificate // published trust anchors
	selfSigned bool
	notAfter   time.Time // earliest NotAfter of cert and upstreamChain
}

func (c *x509CA) validity() (time.Time, time.Time) { return c.cert.NotBefore, c.notAfter }
func (c *x509CA) key() string                      { return c.keyID }

func newX509CA(keyID string, signer crypto.Signer, chain, roots []*x509.Certificate) *x509CA {
	c := &x509CA{keyID: keyID, signer: signer, cert: chain[0], upstreamChain: chain[1:], roots: roots}
	c.selfSigned = len(roots) == 1 && roots[0].Equal(chain[0])
	if !c.selfSigned {
		c.chainAbove = chain
	}
	c.notAfter = chain[0].NotAfter
	for _, ic := range chain[1:] {
		if ic.NotAfter.Before(c.notAfter) {
			c.notAfter = ic.NotAfter
		}
	}
	return c
}

// jwtKey is one JWT signing key.
type jwtKey struct {
	keyID     string
	kid       string
	signer    crypto.Signer // nil for old entries
	jose      jose.Signer   // nil for old entries
	pubDER    []byte        // PKIX
	notBefore time.Time
	notAfter  time.Time
}

func (k *jwtKey) validity() (time.Time, time.Time) { return k.notBefore, k.notAfter }
func (k *jwtKey) key() string                      { return k.keyID }

// keyIDs used in the key manager.
const (
	x509KeyBase = "x509-CA"
	jwtKeyBase  = "JWT-Signer"
)

func validKeyID(base, id string) error {
	if id != base+"-A" && id != base+"-B" {
		return fmt.Errorf("unexpected key ID %q", id)
	}
	return nil
}
