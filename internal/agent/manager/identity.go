package manager

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sigil-spiffe/sigil/internal/agent/client"
	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/keys"
)

// The agent SVID key alternates between two key IDs so that the key of the
// persisted SVID is never overwritten before its replacement is persisted.
const (
	agentKeyA = "agent-svid-a"
	agentKeyB = "agent-svid-b"
)

func otherKeyID(id string) string {
	if id == agentKeyA {
		return agentKeyB
	}
	return agentKeyA
}

// identity is the agent's own SVID, its key ID and the trust bundle used to
// authenticate the server.
type identity struct {
	svid   *x509svid.SVID // nil before attestation
	keyID  string
	bundle []*x509.Certificate
	// renewAt is when the SVID is due for renewal.
	renewAt time.Time
	// reattestable: the server said the attestor can repeat its proof,
	// so the SVID is renewed by attesting again, not with RenewAgent.
	reattestable bool
}

// loadIdentity restores the persisted agent SVID (and bundle). It returns
// errNoState when there is none.
func (m *Manager) loadIdentity(ctx context.Context) (*identity, error) {
	st, err := loadState(m.cfg.DataDir, m.cfg.TrustDomain.Name())
	if errors.Is(err, os.ErrNotExist) {
		return nil, errNoState
	}
	if err != nil {
		return nil, err
	}
	key, err := m.cfg.Keys.GetKey(ctx, st.keyID)
	if err != nil {
		return nil, fmt.Errorf("agent SVID key %s: %w", clip.Quote(st.keyID), err)
	}
	svid, err := m.newAgentSVID(st.svid, key, st.bundle)
	if err != nil {
		return nil, err
	}
	return &identity{svid: svid, keyID: st.keyID, bundle: st.bundle, renewAt: m.renewAt(svid.Certificates[0]), reattestable: st.reattestable}, nil
}

// newAgentSVID validates an agent SVID chain: key match, our trust domain,
// and (when a bundle is known) chaining to it. Expiry is not checked here:
// an expired SVID is still loaded, it just cannot be used.
func (m *Manager) newAgentSVID(chain []*x509.Certificate, key crypto.Signer, bundle []*x509.Certificate) (*x509svid.SVID, error) {
	if len(chain) == 0 {
		return nil, errors.New("agent SVID: empty chain")
	}
	svid, err := svidWithSigner(chain, key)
	if err != nil {
		return nil, fmt.Errorf("agent SVID: %w", err)
	}
	if svid.ID.TrustDomain() != m.cfg.TrustDomain {
		return nil, fmt.Errorf("agent SVID %s is not in trust domain %q", clip.Quote(svid.ID.String()), m.cfg.TrustDomain)
	}
	if len(bundle) > 0 {
		// Verify at the leaf's NotBefore so that an expired SVID still
		// loads (it is refused for use elsewhere).
		at := chain[0].NotBefore.Add(time.Second)
		if _, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(m.cfg.TrustDomain, bundle), x509svid.WithTime(at)); err != nil {
			return nil, fmt.Errorf("agent SVID does not chain to the trust bundle: %w", err)
		}
	}
	return svid, nil
}

// svidWithSigner checks chain as an X509-SVID whose key is key, as
// x509svid.ParseRaw does, without needing the key's bytes: the key of
// KeyManager "tpm" never leaves the TPM.
func svidWithSigner(chain []*x509.Certificate, key crypto.Signer) (*x509svid.SVID, error) {
	leaf := chain[0]
	id, err := x509svid.IDFromCert(leaf)
	switch {
	case err != nil:
		return nil, fmt.Errorf("leaf certificate SPIFFE ID: %w", err)
	case id.Path() == "":
		return nil, errors.New("leaf certificate SPIFFE ID must have a non-root path")
	case leaf.IsCA:
		return nil, errors.New("leaf certificate must not be a CA")
	case leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0:
		return nil, errors.New("leaf certificate must have 'digitalSignature' set as key usage")
	case leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0:
		return nil, errors.New("leaf certificate must not have 'keyCertSign' or 'cRLSign' set as key usage")
	}
	for _, c := range chain[1:] {
		if !c.IsCA || c.KeyUsage&x509.KeyUsageCertSign == 0 {
			return nil, errors.New("signing certificate must be a CA with 'keyCertSign' set as key usage")
		}
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return nil, errors.New("leaf certificate does not match private key")
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, nil
}

// newCSR generates a fresh key under keyID and returns it with a CSR.
func (m *Manager) newAgentKey(ctx context.Context, keyID string) (crypto.Signer, []byte, error) {
	key, err := m.cfg.Keys.GenerateKey(ctx, keyID, keys.ECP256)
	if err != nil {
		err = fmt.Errorf("generate agent key: %w", err)
		if ctx.Err() == nil {
			err = &localError{plugin: "KeyManager", kind: "KeyManager", err: err}
		}
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create agent CSR: %w", err)
	}
	return key, csr, nil
}

// attest runs node attestation with the configured attestor, downloading
// the bundle first when bootstrapping insecurely (bundle empty), and
// persists the result. prev is the identity it replaces (nil if none): the
// new key goes under the other key ID, so prev's persisted SVID keeps its
// key until the new SVID is persisted. The server is authenticated with
// bundle; the agent presents no certificate (its SVID may have expired, or
// been refused).
func (m *Manager) attest(ctx context.Context, bundle []*x509.Certificate, prev *identity) (*identity, error) {
	keyID := agentKeyA
	if prev != nil && prev.keyID != "" {
		keyID = otherKeyID(prev.keyID)
	}
	key, csr, err := m.newAgentKey(ctx, keyID)
	if err != nil {
		return nil, err
	}
	cl, err := client.Dial(client.Config{
		Servers:           m.servers,
		TrustDomain:       m.cfg.TrustDomain,
		Bundle:            func() []*x509.Certificate { return bundle },
		InsecureBootstrap: len(bundle) == 0,
		Log:               m.log,
		DialOptions:       m.cfg.DialOptions,
	})
	if err != nil {
		return nil, err
	}
	defer func() { _ = cl.Close() }()
	sess, err := m.cfg.Attestor.Begin(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("NodeAttestor %q: %w", m.cfg.Attestor.Type(), err)
		}
		return nil, attestorFailed(m.cfg.Attestor.Type(), err)
	}
	defer func() {
		if err := sess.Close(); err != nil {
			m.log.Warn("Failed to close the node attestation session", "node_attestor", m.cfg.Attestor.Type(), "error", err)
		}
	}()
	res, err := cl.AttestAgent(ctx, m.cfg.Attestor.Type(), localSession{Session: sess, name: m.cfg.Attestor.Type()}, csr)
	if err != nil {
		return nil, err
	}
	chain := res.Chain
	svid, err := m.newAgentSVID(chain, key, nil)
	if err != nil {
		return nil, err
	}
	if len(bundle) == 0 {
		// Insecure bootstrap: fetch the bundle with the new SVID (server
		// still unauthenticated) and require the SVID to chain to it.
		bcl, err := client.Dial(client.Config{
			Servers:           m.servers,
			TrustDomain:       m.cfg.TrustDomain,
			SVID:              func() *x509svid.SVID { return svid },
			InsecureBootstrap: true,
			Log:               m.log,
			DialOptions:       m.cfg.DialOptions,
		})
		if err != nil {
			return nil, err
		}
		b, _, err := bcl.GetBundle(ctx)
		_ = bcl.Close()
		if err != nil {
			return nil, fmt.Errorf("bootstrap bundle: %w", err)
		}
		bundle = b.X509Authorities()
	}
	if svid, err = m.newAgentSVID(chain, key, bundle); err != nil {
		return nil, err
	}
	if err := saveState(m.cfg.DataDir, m.cfg.TrustDomain.Name(), &agentState{svid: chain, keyID: keyID, bundle: bundle, reattestable: res.Reattestable}); err != nil {
		return nil, fmt.Errorf("persist agent SVID: %w", err)
	}
	return &identity{svid: svid, keyID: keyID, bundle: bundle, renewAt: m.renewAt(chain[0]), reattestable: res.Reattestable}, nil
}

// renew obtains a new agent SVID over cl, persists it and returns it.
func (m *Manager) renew(ctx context.Context, cl *client.Client, cur *identity) (*identity, error) {
	keyID := otherKeyID(cur.keyID)
	key, csr, err := m.newAgentKey(ctx, keyID)
	if err != nil {
		return nil, err
	}
	chain, err := cl.RenewAgent(ctx, csr)
	if err != nil {
		return nil, err
	}
	svid, err := m.newAgentSVID(chain, key, cur.bundle)
	if err != nil {
		return nil, err
	}
	if svid.ID != cur.svid.ID {
		return nil, fmt.Errorf("renewed agent SVID names %s, want %s", svid.ID, cur.svid.ID)
	}
	if err := saveState(m.cfg.DataDir, m.cfg.TrustDomain.Name(), &agentState{svid: chain, keyID: keyID, bundle: cur.bundle}); err != nil {
		return nil, fmt.Errorf("persist agent SVID: %w", err)
	}
	return &identity{svid: svid, keyID: keyID, bundle: cur.bundle, renewAt: m.renewAt(chain[0])}, nil
}

// usable reports whether the agent SVID can authenticate to the server now.
func (id *identity) usable(now time.Time) bool {
	if id == nil || id.svid == nil {
		return false
	}
	leaf := id.svid.Certificates[0]
	return now.Before(leaf.NotAfter) && !now.Before(leaf.NotBefore.Add(-5*time.Minute))
}

// agentID is used in logs.
func (id *identity) agentID() spiffeid.ID {
	if id == nil || id.svid == nil {
		return spiffeid.ID{}
	}
	return id.svid.ID
}
