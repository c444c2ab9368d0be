package ca

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/keys"
)

// The journal is a JSON document stored as an opaque blob in the
// CAJournalStore. Private keys are never in it: only key-manager IDs.
const journalVersion = 1

const (
	stateActive   = "active"
	statePrepared = "prepared"
	stateOld      = "old"
)

type journalDoc struct {
	Version int           `json:"version"`
	X509    []journalX509 `json:"x509"`
	JWT     []journalJWT  `json:"jwt"`
}

type journalX509 struct {
	State string   `json:"state"`
	KeyID string   `json:"key_id,omitempty"`
	Chain [][]byte `json:"chain"` // DER: the CA certificate, then upstream intermediates
	Roots [][]byte `json:"roots"` // DER: published trust anchors
}

type journalJWT struct {
	State     string `json:"state"`
	KeyID     string `json:"key_id,omitempty"`
	Kid       string `json:"kid"`
	PublicKey []byte `json:"public_key"` // PKIX DER
	NotBefore int64  `json:"not_before"` // unix seconds
	NotAfter  int64  `json:"not_after"`
}

func (m *Manager) save(ctx context.Context) error {
	doc := journalDoc{Version: journalVersion}
	m.mu.RLock()
	addX := func(c *x509CA, state string) {
		if c == nil {
			return
		}
		e := journalX509{State: state}
		if state != stateOld {
			e.KeyID = c.keyID
		}
		e.Chain = append(e.Chain, c.cert.Raw)
		for _, ic := range c.upstreamChain {
			e.Chain = append(e.Chain, ic.Raw)
		}
		for _, r := range c.roots {
			e.Roots = append(e.Roots, r.Raw)
		}
		doc.X509 = append(doc.X509, e)
	}
	addX(m.x509s.active, stateActive)
	addX(m.x509s.next, statePrepared)
	for _, o := range m.x509s.old {
		addX(o, stateOld)
	}
	addJ := func(k *jwtKey, state string) {
		if k == nil {
			return
		}
		e := journalJWT{State: state, Kid: k.kid, PublicKey: k.pubDER, NotBefore: k.notBefore.Unix(), NotAfter: k.notAfter.Unix()}
		if state != stateOld {
			e.KeyID = k.keyID
		}
		doc.JWT = append(doc.JWT, e)
	}
	addJ(m.jwts.active, stateActive)
	addJ(m.jwts.next, statePrepared)
	for _, o := range m.jwts.old {
		addJ(o, stateOld)
	}
	m.mu.RUnlock()
	data, err := json.Marshal(doc)
	if err != nil {
		return fmt.Errorf("encode CA journal: %w", err)
	}
	if err := m.cfg.Journal.SetCAJournal(ctx, m.cfg.JournalName, data); err != nil {
		return fmt.Errorf("save CA journal: %w", err)
	}
	return nil
}

// load restores slots from the journal. Entries whose key is missing or does
// not match (e.g. a crash between key generation and journal write, or a
// wiped key directory) are kept as old authorities: still published until
// they expire, never signing again.
func (m *Manager) load(ctx context.Context) error {
	data, err := m.cfg.Journal.GetCAJournal(ctx, m.cfg.JournalName)
	if errors.Is(err, datastore.ErrNotFound) {
		m.log.Info("no CA journal: a new CA will be created")
		return nil
	}
	if err != nil {
		return fmt.Errorf("ca: read journal: %w", err)
	}
	var doc journalDoc
	if err := json.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("ca: decode journal: %w", err)
	}
	if doc.Version != journalVersion {
		return fmt.Errorf("ca: journal version %d is not supported (want %d)", doc.Version, journalVersion)
	}
	now := m.clk.Now()
	if err := m.checkTrustDomain(doc, now); err != nil {
		return err
	}
	var xs slots[*x509CA]
	for i, e := range doc.X509 {
		c, err := m.loadX509(ctx, e)
		if err != nil {
			m.log.Warn("dropping unreadable X.509 CA journal entry", "index", i, "error", err)
			m.dirty = true
			continue
		}
		if expired(c, now) {
			m.dirty = true
			continue
		}
		usable := c.signer != nil
		switch {
		case !usable:
		case e.State == stateActive && xs.active == nil:
			xs.active = c
			continue
		case e.State == statePrepared && xs.next == nil:
			xs.next = c
			continue
		}
		if e.State != stateOld {
			m.dirty = true
		}
		c.signer, c.keyID = nil, ""
		xs.old = append(xs.old, c)
	}
	var js slots[*jwtKey]
	for i, e := range doc.JWT {
		k, err := m.loadJWT(ctx, e)
		if err != nil {
			m.log.Warn("dropping unreadable JWT key journal entry", "index", i, "error", err)
			m.dirty = true
			continue
		}
		if expired(k, now) {
			m.dirty = true
			continue
		}
		usable := k.signer != nil
		switch {
		case !usable:
		case e.State == stateActive && js.active == nil:
			js.active = k
			continue
		case e.State == statePrepared && js.next == nil:
			js.next = k
			continue
		}
		if e.State != stateOld {
			m.dirty = true
		}
		k.signer, k.jose, k.keyID = nil, nil, ""
		js.old = append(js.old, k)
	}
	// A prepared authority without an active one is promoted by step.
	m.mu.Lock()
	m.x509s, m.jwts = xs, js
	m.mu.Unlock()
	m.log.Info("loaded CA journal", "x509_active", xs.active != nil, "x509_prepared", xs.next != nil, "x509_old", len(xs.old),
		"jwt_active", js.active != nil, "jwt_prepared", js.next != nil, "jwt_old", len(js.old))
	return nil
}

// TrustDomainMismatchError is returned by Init when the journal holds an
// unexpired CA of another trust domain: the datastore belongs to that
// trust domain. Going on would publish its CA in this trust domain's
// bundle and keep its JWT keys; Init changes nothing and fails instead.
type TrustDomainMismatchError struct {
	Journal    spiffeid.TrustDomain
	Configured spiffeid.TrustDomain
}

func (e *TrustDomainMismatchError) Error() string {
	return fmt.Sprintf("ca: the CA journal holds a CA of trust domain %s, not of the configured %s", e.Journal.Name(), e.Configured.Name())
}

// checkTrustDomain fails with a *TrustDomainMismatchError if an unexpired
// X.509 CA of the journal names another trust domain (its URI SAN).
func (m *Manager) checkTrustDomain(doc journalDoc, now time.Time) error {
	for _, e := range doc.X509 {
		if len(e.Chain) == 0 {
			continue
		}
		c, err := x509.ParseCertificate(e.Chain[0])
		if err != nil || !now.Before(c.NotAfter) {
			continue // dropped by load, whatever its domain
		}
		for _, u := range c.URIs {
			id, err := spiffeid.FromURI(u)
			if err != nil {
				continue
			}
			if id.TrustDomain() != m.cfg.TrustDomain {
				return &TrustDomainMismatchError{Journal: id.TrustDomain(), Configured: m.cfg.TrustDomain}
			}
		}
	}
	return nil
}

func parseDERs(ders [][]byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for _, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// loadX509 parses an entry and, for an active or prepared one, attaches its
// key when the key manager still has the matching key and the certificate
// fits the current configuration (trust domain, upstream or not). A
// returned entry with a nil signer is usable only as an old authority.
func (m *Manager) loadX509(ctx context.Context, e journalX509) (*x509CA, error) {
	chain, err := parseDERs(e.Chain)
	if err != nil {
		return nil, fmt.Errorf("parse chain: %w", err)
	}
	roots, err := parseDERs(e.Roots)
	if err != nil {
		return nil, fmt.Errorf("parse roots: %w", err)
	}
	if len(chain) == 0 || len(roots) == 0 {
		return nil, errors.New("empty chain or roots")
	}
	c := newX509CA("", nil, chain, roots)
	if e.State == stateOld {
		return c, nil
	}
	if err := validKeyID(x509KeyBase, e.KeyID); err != nil {
		return c, nil
	}
	if c.selfSigned != (m.cfg.Upstream == nil) {
		m.log.Info("X.509 CA in the journal does not match the upstream_authority setting; it will be replaced", "self_signed", c.selfSigned)
		return c, nil
	}
	if !hasURI(c.cert, m.tdID.String()) {
		m.log.Warn("X.509 CA in the journal is for another trust domain; it will be replaced")
		return c, nil
	}
	signer, err := m.cfg.Keys.GetKey(ctx, e.KeyID)
	if err != nil {
		m.log.Warn("key of the journaled X.509 CA is unavailable; it will be replaced", "key_id", e.KeyID, "error", err)
		return c, nil
	}
	if !publicKeyEqual(signer.Public(), c.cert.PublicKey) {
		m.log.Warn("key of the journaled X.509 CA does not match its certificate; it will be replaced", "key_id", e.KeyID)
		return c, nil
	}
	c.keyID, c.signer = e.KeyID, signer
	return c, nil
}

func hasURI(c *x509.Certificate, uri string) bool {
	for _, u := range c.URIs {
		if u.String() == uri {
			return true
		}
	}
	return false
}

func (m *Manager) loadJWT(ctx context.Context, e journalJWT) (*jwtKey, error) {
	pub, err := x509.ParsePKIXPublicKey(e.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	if e.Kid == "" {
		return nil, errors.New("empty kid")
	}
	k := &jwtKey{kid: e.Kid, pubDER: e.PublicKey, notBefore: time.Unix(e.NotBefore, 0), notAfter: time.Unix(e.NotAfter, 0)}
	if e.State == stateOld || validKeyID(jwtKeyBase, e.KeyID) != nil {
		return k, nil
	}
	signer, err := m.cfg.Keys.GetKey(ctx, e.KeyID)
	if err != nil {
		m.log.Warn("journaled JWT key is unavailable; it will be replaced", "key_id", e.KeyID, "error", err)
		return k, nil
	}
	if !publicKeyEqual(signer.Public(), pub) {
		m.log.Warn("journaled JWT key does not match its public key; it will be replaced", "key_id", e.KeyID)
		return k, nil
	}
	if t, err := keys.TypeOf(pub); err != nil || jwtAlgOrEmpty(t) == "" {
		m.log.Warn("journaled JWT key has an unsupported type; it will be replaced", "key_id", e.KeyID)
		return k, nil
	}
	full, err := m.newJWTKey(e.KeyID, e.Kid, signer, k.notBefore, k.notAfter)
	if err != nil {
		return k, nil
	}
	return full, nil
}
