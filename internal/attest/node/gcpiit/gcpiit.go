// Package gcpiit implements GCP instance identity token node attestation,
// wire- and configuration-compatible with SPIRE's "gcp_iit" plugins: a
// Compute Engine instance proves which instance it is with an identity
// token Google signs for it, and gets an agent ID and selectors from the
// token and, optionally, from the Compute API.
//
// The exchange has no challenge. The agent asks the instance's metadata
// server for an identity token of its service account (GET
// http://<identity_token_host>/computeMetadata/v1/instance/service-accounts/
// <service_account>/identity?audience=spire-gcp-node-attestor&format=full,
// with Metadata-Flavor: Google) and sends the token as it is: a JWT signed
// RS256 by Google whose google.compute_engine claim names the project,
// zone, instance ID and name.
//
// The server verifies the signature with Google's OAuth 2.0 certificates
// (https://www.googleapis.com/oauth2/v1/certs, a map of key IDs to PEM
// certificates, or a JWKS such as .../oauth2/v3/certs; cached as the
// answer's Cache-Control or Expires says; the URL is the Sigil extension
// certificates_url), the issuer (accounts.google.com), the audience, the
// token's lifetime, and that the project is in projectid_allow_list. The
// agent ID is spiffe://<trust domain>/spire/agent/gcp_iit/<project>/
// <instance id> unless agent_path_template says otherwise. Selectors, as
// SPIRE's: gcp_iit:project-id:, zone:, instance-name:, sa: (the service
// account's email) from the token, and with use_instance_metadata tag:,
// label:<key>:<value> and metadata:<key>:<value> (allowed keys only) from
// the Compute API (instances.get with the server's Google credentials:
// service_account_file, else Application Default Credentials).
//
// The token names the instance for as long as it is valid and any process
// on the instance can get one, so attestation is trust on first use (as
// SPIRE): an instance whose agent is on record is refused
// (node.Result.CanReattest is false), until the agent is evicted.
//
// The agent half is plain HTTP (sigil-agent links no Google client
// library). The Compute API client, which uses golang.org/x/oauth2/google
// for credentials, is package computeapi, linked by sigil-server only.
package gcpiit

import (
	"fmt"
	"strings"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/lazyre"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// Type is the attestation type, the plugin name and the selector type.
const Type = "gcp_iit"

// DefaultAudience is the audience SPIRE's agents request and its servers
// require.
const DefaultAudience = "spire-gcp-node-attestor"

// MaxTokenSize bounds the attestation data (a token is ~1 KiB).
const MaxTokenSize = 16 << 10

// ComputeEngine is the google.compute_engine claim of a format=full
// identity token.
type ComputeEngine struct {
	ProjectID                 string `json:"project_id"`
	ProjectNumber             int64  `json:"project_number"`
	Zone                      string `json:"zone"`
	InstanceID                string `json:"instance_id"`
	InstanceName              string `json:"instance_name"`
	InstanceCreationTimestamp int64  `json:"instance_creation_timestamp"`
}

var (
	reProjectID    = lazyre.New(`^([a-z0-9][a-z0-9.-]{0,62}:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$`)
	reZone         = lazyre.New(`^[a-z]+-[a-z]+[0-9]+-[a-z]$`)
	reInstanceID   = lazyre.New(`^[0-9]{1,20}$`)
	reInstanceName = lazyre.New(`^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$`)
)

// check validates the fields that end up in the agent ID, selectors and
// Compute API URLs.
func (c ComputeEngine) check() error {
	for _, f := range []struct {
		name, v string
		re      *lazyre.Regexp
	}{{"project_id", c.ProjectID, reProjectID}, {"zone", c.Zone, reZone}, {"instance_id", c.InstanceID, reInstanceID}, {"instance_name", c.InstanceName, reInstanceName}} {
		if !f.re.MatchString(f.v) {
			return fmt.Errorf("google.compute_engine.%s %s is not valid", f.name, clip.Quote(f.v))
		}
	}
	return nil
}

// SelectorKind describes the node selectors of gcp_iit attestation (as
// SPIRE's), so an entry with a value Attest can never produce
// (gcp_iit:project:x, gcp_iit:label:k) is refused when it is written:
//
//   - project-id:<project>, zone:<zone>, instance-name:<name>,
//     sa:<service account email>
//   - tag:<network tag>, label:<key>:<value>, metadata:<key>:<value>
//     (use_instance_metadata)
func SelectorKind() selector.Kind {
	keyed := func(v string) error {
		if k, _, ok := strings.Cut(v, ":"); !ok || k == "" {
			return fmt.Errorf("%s is not <key>:<value>", clip.Quote(v))
		}
		return nil
	}
	keys := map[string]func(string) error{
		"project-id":    nil,
		"zone":          nil,
		"instance-name": nil,
		"sa":            nil,
		"tag":           nil,
		"label":         keyed,
		"metadata":      keyed,
	}
	return selector.Kind{
		Type:     Type,
		Producer: `NodeAttestor "gcp_iit"`,
		Check:    func(v string) error { return selector.CheckKeyed(v, keys) },
	}
}
