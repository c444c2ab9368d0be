package convert

import (
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"

	"github.com/sigil-spiffe/sigil/internal/datastore"
)

// AgentToProto converts an attested node to the wire Agent (all fields).
func AgentToProto(n *datastore.AttestedNode) (*types.Agent, error) {
	id, err := IDStringToProto(n.SPIFFEID)
	if err != nil {
		return nil, err
	}
	return &types.Agent{
		Id:                   id,
		AttestationType:      n.AttestationType,
		X509SvidSerialNumber: n.CertSerial,
		X509SvidExpiresAt:    n.CertNotAfter,
		Selectors:            SelectorsToProto(n.Selectors),
		Banned:               n.Banned(),
		CanReattest:          n.CanReattest,
		AgentVersion:         n.AgentVersion,
	}, nil
}

// ApplyAgentMask clears the fields the mask does not select (nil =
// everything). The ID is always kept.
func ApplyAgentMask(a *types.Agent, mask *types.AgentMask) {
	if mask == nil || a == nil {
		return
	}
	if !mask.AttestationType {
		a.AttestationType = ""
	}
	if !mask.X509SvidSerialNumber {
		a.X509SvidSerialNumber = ""
	}
	if !mask.X509SvidExpiresAt {
		a.X509SvidExpiresAt = 0
	}
	if !mask.Selectors {
		a.Selectors = nil
	}
	if !mask.Banned {
		a.Banned = false
	}
	if !mask.CanReattest {
		a.CanReattest = false
	}
	if !mask.AgentVersion {
		a.AgentVersion = ""
	}
}
