package agent

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// Local conversions. TODO(integration): switch to internal/server/api/convert
// once it lands.

type emptyResp = emptypb.Empty

// expiresBeforeLayout is the format SPIRE's CLI sends in by_expires_before.
const expiresBeforeLayout = "2006-01-02 15:04:05 -0700 -07"

func idFromProto(p *types.SPIFFEID) (spiffeid.ID, error) {
	if p == nil {
		return spiffeid.ID{}, errors.New("request must specify SPIFFE ID")
	}
	td, err := spiffeid.TrustDomainFromString(p.GetTrustDomain())
	if err != nil {
		return spiffeid.ID{}, err
	}
	return spiffeid.FromPath(td, p.GetPath())
}

func protoFromID(id spiffeid.ID) *types.SPIFFEID {
	return &types.SPIFFEID{TrustDomain: id.TrustDomain().Name(), Path: id.Path()}
}

// agentIDFromProto accepts only agent IDs of our trust domain
// (spiffe://<td>/spire/agent/...).
func (s *Service) agentIDFromProto(p *types.SPIFFEID) (spiffeid.ID, error) {
	id, err := idFromProto(p)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if !id.MemberOf(s.td) {
		return spiffeid.ID{}, fmt.Errorf("%q is not a member of trust domain %q", id, s.td)
	}
	if !strings.HasPrefix(id.Path(), "/spire/agent/") {
		return spiffeid.ID{}, fmt.Errorf("%q is not an agent in trust domain %q; path is not in the agent namespace", id, s.td)
	}
	return id, nil
}

// workloadIDFromProto accepts IDs of our trust domain with a non-empty path
// outside the reserved /spire/ namespace.
func (s *Service) workloadIDFromProto(p *types.SPIFFEID) (spiffeid.ID, error) {
	id, err := idFromProto(p)
	if err != nil {
		return spiffeid.ID{}, err
	}
	switch {
	case !id.MemberOf(s.td):
		return spiffeid.ID{}, fmt.Errorf("%q is not a member of trust domain %q", id, s.td)
	case id.Path() == "":
		return spiffeid.ID{}, fmt.Errorf("%q is not a workload in trust domain %q; path is empty", id, s.td)
	case id.Path() == "/spire" || strings.HasPrefix(id.Path(), "/spire/"):
		return spiffeid.ID{}, fmt.Errorf("%q is not a workload in trust domain %q; path is in the reserved namespace \"/spire/\"", id, s.td)
	}
	return id, nil
}

func agentToProto(n *datastore.AttestedNode) (*types.Agent, error) {
	id, err := spiffeid.FromString(n.SPIFFEID)
	if err != nil {
		return nil, err
	}
	a := &types.Agent{
		Id:                   protoFromID(id),
		AttestationType:      n.AttestationType,
		X509SvidSerialNumber: n.CertSerial,
		X509SvidExpiresAt:    n.CertNotAfter,
		Banned:               n.CertSerial == "" && n.NewCertSerial == "",
		CanReattest:          n.CanReattest,
	}
	for _, sel := range n.Selectors {
		a.Selectors = append(a.Selectors, &types.Selector{Type: sel.Type, Value: sel.Value})
	}
	return a, nil
}

func applyMask(a *types.Agent, m *types.AgentMask) {
	if m == nil {
		return
	}
	if !m.AttestationType {
		a.AttestationType = ""
	}
	if !m.X509SvidSerialNumber {
		a.X509SvidSerialNumber = ""
	}
	if !m.X509SvidExpiresAt {
		a.X509SvidExpiresAt = 0
	}
	if !m.Selectors {
		a.Selectors = nil
	}
	if !m.Banned {
		a.Banned = false
	}
	if !m.CanReattest {
		a.CanReattest = false
	}
	if !m.AgentVersion {
		a.AgentVersion = ""
	}
}

func nodeFilter(attType string, sm *types.SelectorMatch, banned, canReattest *wrapperspb.BoolValue, expiresBefore string) (datastore.NodeFilter, error) {
	f := datastore.NodeFilter{ByAttestationType: attType}
	if banned != nil {
		v := banned.GetValue()
		f.ByBanned = &v
	}
	if canReattest != nil {
		v := canReattest.GetValue()
		f.ByCanReattest = &v
	}
	if expiresBefore != "" {
		t, err := parseTime(expiresBefore)
		if err != nil {
			return f, err
		}
		f.ExpiresBefore = t.Unix()
	}
	if sm != nil {
		switch sm.GetMatch() {
		case types.SelectorMatch_MATCH_EXACT:
			f.SelectorMatch = datastore.MatchExact
		case types.SelectorMatch_MATCH_SUBSET:
			f.SelectorMatch = datastore.MatchSubset
		case types.SelectorMatch_MATCH_SUPERSET:
			f.SelectorMatch = datastore.MatchSuperset
		case types.SelectorMatch_MATCH_ANY:
			f.SelectorMatch = datastore.MatchAny
		default:
			return f, fmt.Errorf("unknown selector match behavior %d", sm.GetMatch())
		}
		if len(sm.GetSelectors()) == 0 {
			return f, errors.New("selector match requires at least one selector")
		}
		for _, ps := range sm.GetSelectors() {
			sel := selector.Selector{Type: ps.GetType(), Value: ps.GetValue()}
			if err := sel.Validate(); err != nil {
				return f, fmt.Errorf("failed to parse selectors: %w", err)
			}
			f.BySelectors = append(f.BySelectors, sel)
		}
	}
	return f, nil
}

// parseTime accepts SPIRE's CLI layout, RFC 3339, or unix seconds.
func parseTime(s string) (time.Time, error) {
	if t, err := time.Parse(expiresBeforeLayout, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	var secs int64
	if _, err := fmt.Sscanf(s, "%d", &secs); err == nil && fmt.Sprint(secs) == s {
		return time.Unix(secs, 0), nil
	}
	return time.Time{}, fmt.Errorf("by_expires_before %q is not a time in the form %q or RFC 3339", s, expiresBeforeLayout)
}

func validateAttestParams(p *agentv1.AttestAgentRequest_Params) error {
	switch {
	case p == nil:
		return errors.New("missing params")
	case p.GetData() == nil:
		return errors.New("missing attestation data")
	case p.GetParams() == nil:
		return errors.New("missing X509-SVID parameters")
	case len(p.GetParams().GetCsr()) == 0:
		return errors.New("missing CSR")
	case p.GetData().GetType() == "":
		return errors.New("missing attestation data type")
	case len(p.GetData().GetPayload()) == 0:
		return errors.New("missing attestation data payload")
	}
	return nil
}

// parseCSR parses a DER CSR and checks its self-signature (proof of
// possession of the private key).
func parseCSR(der []byte) (*x509.CertificateRequest, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("invalid CSR signature: %w", err)
	}
	return csr, nil
}

func x509SVIDToProto(id spiffeid.ID, chain []*x509.Certificate) *types.X509SVID {
	raw := make([][]byte, 0, len(chain))
	for _, c := range chain {
		raw = append(raw, c.Raw)
	}
	return &types.X509SVID{Id: protoFromID(id), CertChain: raw, ExpiresAt: chain[0].NotAfter.Unix()}
}
