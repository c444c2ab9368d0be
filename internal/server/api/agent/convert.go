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

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/datastore"
	"github.com/sigil-spiffe/sigil/internal/server/api/convert"
)

type emptyResp = emptypb.Empty

// expiresBeforeLayout is the format SPIRE's CLI sends in by_expires_before.
const expiresBeforeLayout = "2006-01-02 15:04:05 -0700 -07"

// agentIDFromProto accepts only agent IDs of our trust domain
// (spiffe://<td>/spire/agent/...).
func (s *Service) agentIDFromProto(p *types.SPIFFEID) (spiffeid.ID, error) {
	id, err := convert.IDFromProto(p)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if !id.MemberOf(s.td) {
		return spiffeid.ID{}, fmt.Errorf("%s is not a member of trust domain %q", clip.Quote(id.String()), s.td)
	}
	if !strings.HasPrefix(id.Path(), "/spire/agent/") {
		return spiffeid.ID{}, fmt.Errorf("%s is not an agent in trust domain %q; path is not in the agent namespace", clip.Quote(id.String()), s.td)
	}
	return id, nil
}

// agentFilter is the filter of CountAgents and ListAgents (two generated
// types with the same getters; a nil filter reads as empty).
type agentFilter interface {
	GetByAttestationType() string
	GetBySelectorMatch() *types.SelectorMatch
	GetByBanned() *wrapperspb.BoolValue
	GetByCanReattest() *wrapperspb.BoolValue
	GetByExpiresBefore() string
}

func nodeFilter(rf agentFilter) (datastore.NodeFilter, error) {
	sm, banned, canReattest, expiresBefore := rf.GetBySelectorMatch(), rf.GetByBanned(), rf.GetByCanReattest(), rf.GetByExpiresBefore()
	f := datastore.NodeFilter{ByAttestationType: rf.GetByAttestationType()}
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
		sels, err := convert.SelectorsFromProtoValidated(sm.GetSelectors())
		if err != nil {
			return f, err
		}
		f.BySelectors = sels
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
	return time.Time{}, fmt.Errorf("by_expires_before %s is not a time in the form %q or RFC 3339", clip.Quote(s), expiresBeforeLayout)
}

// maxAttestationTypeLen bounds the attestation data type a client sends
// (node attestor names are short; errors and logs echo it).
const maxAttestationTypeLen = 64

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
	case len(p.GetData().GetType()) > maxAttestationTypeLen:
		return fmt.Errorf("attestation data type is longer than %d bytes", maxAttestationTypeLen)
	case len(p.GetData().GetPayload()) == 0:
		return errors.New("missing attestation data payload")
	}
	return nil
}

func x509SVIDToProto(id spiffeid.ID, chain []*x509.Certificate) *types.X509SVID {
	raw := make([][]byte, 0, len(chain))
	for _, c := range chain {
		raw = append(raw, c.Raw)
	}
	return &types.X509SVID{Id: convert.IDToProto(id), CertChain: raw, ExpiresAt: chain[0].NotAfter.Unix()}
}
