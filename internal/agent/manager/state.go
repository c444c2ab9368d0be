package manager

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/keys"
)

// stateFile is the name, inside DataDir, of the agent's own persisted state:
// its SVID chain, the key manager ID of the SVID's key and the trust bundle
// it authenticates the server with.
const stateFile = "agent_svid.json"

// persistedState is the on-disk form of the agent's identity.
type persistedState struct {
	Version int `json:"version"`
	// TrustDomain the SVID and bundle belong to.
	TrustDomain string `json:"trust_domain"`
	// SVID is the agent SVID chain, leaf first, DER.
	SVID [][]byte `json:"svid"`
	// KeyID names the SVID's private key in the key manager.
	KeyID string `json:"key_id"`
	// Bundle holds the X.509 authorities of the trust domain, DER.
	Bundle [][]byte `json:"bundle"`
	// Reattestable is the server's word, at the last attestation, that
	// the node attestor can repeat its proof: the SVID is renewed by
	// attesting again. Absent (false) in files of earlier versions.
	Reattestable bool `json:"reattestable,omitempty"`
}

type agentState struct {
	svid         []*x509.Certificate
	keyID        string
	bundle       []*x509.Certificate
	reattestable bool
}

func loadState(dir, td string) (*agentState, error) {
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, err
	}
	var p persistedState
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("parse %s: %w", stateFile, err)
	}
	if p.Version != 1 {
		return nil, fmt.Errorf("%s: unsupported version %d", stateFile, p.Version)
	}
	if p.TrustDomain != td {
		return nil, fmt.Errorf("%s belongs to trust domain %s, configured %q", stateFile, clip.Quote(p.TrustDomain), td)
	}
	if len(p.SVID) == 0 || p.KeyID == "" {
		return nil, fmt.Errorf("%s: no SVID", stateFile)
	}
	st := &agentState{keyID: p.KeyID, reattestable: p.Reattestable}
	for _, der := range p.SVID {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%s: SVID: %w", stateFile, err)
		}
		st.svid = append(st.svid, c)
	}
	for _, der := range p.Bundle {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%s: bundle: %w", stateFile, err)
		}
		st.bundle = append(st.bundle, c)
	}
	return st, nil
}

func saveState(dir, td string, st *agentState) error {
	p := persistedState{Version: 1, TrustDomain: td, KeyID: st.keyID, Reattestable: st.reattestable}
	for _, c := range st.svid {
		p.SVID = append(p.SVID, c.Raw)
	}
	for _, c := range st.bundle {
		p.Bundle = append(p.Bundle, c.Raw)
	}
	data, err := json.Marshal(&p)
	if err != nil {
		return fmt.Errorf("encode agent state: %w", err)
	}
	return keys.WriteFileAtomic(dir, stateFile, data)
}

// deleteState removes the persisted agent state: a revoked agent forgets
// its SVID (and the bundle kept with it).
func deleteState(dir string) error {
	return keys.RemoveFile(dir, stateFile)
}

var errNoState = errors.New("no persisted agent SVID")
