package ca

import "time"

// Validity is the lifetime of a CA key: its certificate's (X.509) or its
// publication's (JWT). The zero value means none.
type Validity struct {
	NotBefore, NotAfter time.Time
}

// ActiveValidity returns the lifetimes of the X.509 CA and the JWT key
// that sign now (zero before Init), for monitoring: an active authority
// close to its NotAfter means rotation is not happening.
func (m *Manager) ActiveValidity() (x509CA, jwtKey Validity) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if c := m.x509s.active; c != nil {
		x509CA.NotBefore, x509CA.NotAfter = c.validity()
	}
	if k := m.jwts.active; k != nil {
		jwtKey.NotBefore, jwtKey.NotAfter = k.validity()
	}
	return x509CA, jwtKey
}
