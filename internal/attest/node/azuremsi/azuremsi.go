// Package azuremsi implements Azure managed identity node attestation,
// wire- and configuration-compatible with SPIRE's "azure_msi" plugins: an
// Azure VM proves which VM it is with an access token Azure AD issues to
// its system-assigned managed identity, and gets an agent ID and selectors
// from the token and the Azure Resource Manager API.
//
// The exchange has no challenge. The agent asks the instance metadata
// service for a token (GET http://169.254.169.254/metadata/identity/oauth2/
// token?api-version=2018-02-01&resource=<resource_id>, with Metadata: true)
// and sends {"token": "<access token>"} (SPIRE's field name).
//
// The server verifies the token's signature with Azure AD's keys (the JWKS
// its OpenID configuration names, https://login.microsoftonline.com/common/
// .well-known/openid-configuration; cached an hour, an unknown key ID
// fetches them again at most every 30 seconds), that its tenant (tid) is
// one of the configured tenants, its issuer is that tenant's, its audience
// is the tenant's resource_id, and its lifetime (5 minutes of skew, as
// SPIRE). The agent ID is spiffe://<trust domain>/spire/agent/azure_msi/
// <tenant id>/<principal id> unless agent_path_template says otherwise.
// Selectors, as SPIRE's, from Resource Manager with the tenant's
// credentials (app_id and app_secret, or the server's own managed
// identity): azure_msi:subscription-id:<subscription>,
// vm-name:<resource group>:<name>, and for each network interface
// network-security-group:<group>:<name>, virtual-network:<group>:<vnet>,
// virtual-network-subnet:<group>:<vnet>:<subnet>.
//
// Any process on the VM can get the token, so attestation is trust on
// first use (as SPIRE): a VM whose agent is on record is refused
// (node.Result.CanReattest is false), until the agent is evicted.
//
// The agent half is plain HTTP (sigil-agent links no Azure SDK); so is the
// server half: armapi speaks to Azure AD and Resource Manager with
// net/http and JSON.
package azuremsi

import (
	"fmt"
	"strings"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/lazyre"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// Type is the attestation type, the plugin name and the selector type.
const Type = "azure_msi"

// DefaultResourceID is the token's audience by default (SPIRE's: the
// Resource Manager API's service ID).
const DefaultResourceID = "https://management.azure.com/"

// MaxPayloadSize bounds the attestation data (a token is 1-3 KiB).
const MaxPayloadSize = 32 << 10

// attestationData is the payload, with SPIRE's field name.
type attestationData struct {
	Token string `json:"token"`
}

// reGUID is an Azure tenant, principal or subscription ID.
var reGUID = lazyre.New(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// SelectorKind describes the node selectors of azure_msi attestation (as
// SPIRE's), so an entry with a value Attest can never produce
// (azure_msi:vm-name:vm1, azure_msi:subscription:x) is refused when it is
// written:
//
//   - subscription-id:<subscription ID>
//   - vm-name:<resource group>:<VM name>
//   - network-security-group:<resource group>:<name>
//   - virtual-network:<resource group>:<name>
//   - virtual-network-subnet:<resource group>:<virtual network>:<subnet>
func SelectorKind() selector.Kind {
	parts := func(n int, form string) func(string) error {
		return func(v string) error {
			p := strings.Split(v, ":")
			if len(p) != n {
				return fmt.Errorf("%s is not %s", clip.Quote(v), form)
			}
			for _, s := range p {
				if s == "" {
					return fmt.Errorf("%s is not %s", clip.Quote(v), form)
				}
			}
			return nil
		}
	}
	keys := map[string]func(string) error{
		"subscription-id": func(v string) error {
			if !reGUID.MatchString(v) {
				return fmt.Errorf("%s is not a subscription ID (a GUID)", clip.Quote(v))
			}
			return nil
		},
		"vm-name":                parts(2, "<resource group>:<VM name>"),
		"network-security-group": parts(2, "<resource group>:<network security group>"),
		"virtual-network":        parts(2, "<resource group>:<virtual network>"),
		"virtual-network-subnet": parts(3, "<resource group>:<virtual network>:<subnet>"),
	}
	return selector.Kind{
		Type:     Type,
		Producer: `NodeAttestor "azure_msi"`,
		Check:    func(v string) error { return selector.CheckKeyed(v, keys) },
	}
}
