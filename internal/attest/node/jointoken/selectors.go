package jointoken

import (
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// SelectorKinds describes the node selector types of join-token
// attestation:
//
//   - "join_token": Attest yields no node selectors (as SPIRE's plugin), so
//     an entry with such a selector never matches;
//   - "spiffe_id": the agent ID as a selector, spiffe_id:<agent ID>, which
//     the alias entry of a token created with an agent ID carries (and
//     which SPIRE adds to every agent with agent_spiffe_id_as_selector).
func SelectorKinds() []selector.Kind {
	return []selector.Kind{
		{
			Type:     Type,
			Producer: `NodeAttestor "join_token"`,
			Check: func(string) error {
				return errors.New("join-token attestation gives an agent no selectors; to target the agent of a token, " +
					"use -parentID spiffe://<trust domain>/spire/agent/join_token/<token> (or create the token with -spiffeID and use that ID)")
			},
		},
		{
			Type:     "spiffe_id",
			Producer: "the server (agent ID as a node selector)",
			Check: func(v string) error {
				if _, err := spiffeid.FromString(v); err != nil {
					return fmt.Errorf("%s is not a SPIFFE ID: %w", clip.Quote(v), err)
				}
				return nil
			},
		},
	}
}
