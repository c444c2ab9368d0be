// Package azureimds implements Azure instance metadata node attestation,
// wire- and configuration-compatible with SPIRE's "azure_imds" plugins
// (SPIRE 1.15): an Azure VM, or a VM of a scale set, proves which VM it is
// with the attested document of its instance metadata service, and needs
// no managed identity.
//
// The exchange has one challenge. The agent sends a placeholder payload;
// the server answers with a nonce (32 letters and digits); the agent gets
// the attested document for that nonce (GET http://169.254.169.254/
// metadata/attested/document?api-version=2025-04-07&nonce=<nonce>, with
// Metadata: true) and its scale set's name (GET /metadata/instance), and
// answers {"document": {"encoding", "signature"}, "metadata":
// {"agentDomain", "vmssName"}} (SPIRE's field names). The metadata is the
// agent's claim, never trusted: it only points the server to the tenant
// and the scale set to look the VM up in.
//
// The server (server half) decodes the signature, a PKCS #7 SignedData of
// the document's JSON (vmId, subscriptionId, nonce, timeStamp), and
// requires exactly one signer, whose certificate the message carries and
// is found by issuer and serial number (never by its place in the
// certificate bag: SPIRE's fix #6998); the signature must verify with it,
// the certificate must name a host of allowed_metadata_domains and chain
// to Microsoft's roots (embedded; trust_bundle_path adds more, for a new
// Azure root or a test cloud), its intermediate from the bag or fetched
// from its CA issuers URL on www.microsoft.com. Then the document's nonce
// must be the challenge's, it must not have expired, its subscription must
// be allowed for the claimed tenant (restrict_to_subscriptions), and
// Resource Manager, read with the tenant's credentials, must know the VM:
// its name, resource group, location, tags and network give the
// selectors. The agent ID is spiffe://<trust domain>/spire/agent/
// azure_imds/<tenant id>/<subscription id>/<vm id> unless
// agent_path_template says otherwise.
//
// Any process on the VM can get an attested document, so attestation is
// trust on first use (as SPIRE): a VM whose agent is on record is refused
// until the agent is evicted.
//
// The agent half is plain HTTP (sigil-agent links no Azure SDK and no
// PKCS #7 code); the server half reads Resource Manager with net/http
// (armimds, internal/azurearm).
package azureimds

import (
	"fmt"
	"strings"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/lazyre"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// Type is the attestation type, the plugin name and the selector type.
const Type = "azure_imds"

// MaxPayloadSize bounds the agent's payload and its answer (a document is
// 3-8 KiB).
const MaxPayloadSize = 64 << 10

// placeholder is the agent's first payload (SPIRE's agent sends the same;
// the server ignores it).
const placeholder = "non_empty_payload"

// Document is the attested document as the metadata service returns it.
type Document struct {
	Encoding  string `json:"encoding"`
	Signature string `json:"signature"`
}

// Metadata is the agent's untrusted hint (SPIRE's field names).
type Metadata struct {
	AgentDomain string  `json:"agentDomain"`
	VMSSName    *string `json:"vmssName"`
}

// Response is the agent's answer to the challenge.
type Response struct {
	Document Document `json:"document"`
	Metadata Metadata `json:"metadata"`
}

// reGUID is an Azure tenant, subscription or VM ID.
var reGUID = lazyre.New(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// reVMSSName is Azure's rule for a scale set name.
var reVMSSName = lazyre.New(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}[a-zA-Z0-9_]$|^[a-zA-Z0-9]$`)

// SelectorKind describes the node selectors of azure_imds attestation (as
// SPIRE's), so an entry with a value Attest can never produce is refused
// when it is written:
//
//   - subscription-id:<subscription ID>
//   - vm-name:<VM name>, vmss-name:<scale set name>
//   - resource-group:<resource group>, vm-location:<location>
//   - vm-tag:<key>:<value> (keys of allowed_vm_tags)
//   - network-security-group:<resource group>:<name>
//   - virtual-network:<name>, virtual-network-subnet:<virtual network>:<subnet>
func SelectorKind() selector.Kind {
	// parts: n parts separated by ":" (the last may hold ":"), none
	// empty but the last when emptyLast.
	parts := func(n int, emptyLast bool, form string) func(string) error {
		return func(v string) error {
			p := strings.SplitN(v, ":", n)
			if len(p) != n {
				return fmt.Errorf("%s is not %s", clip.Quote(v), form)
			}
			for i, s := range p {
				if s == "" && (i < n-1 || !emptyLast) {
					return fmt.Errorf("%s is not %s", clip.Quote(v), form)
				}
			}
			return nil
		}
	}
	one := func(form string) func(string) error {
		return func(v string) error {
			if strings.Contains(v, ":") {
				return fmt.Errorf("%s is not %s", clip.Quote(v), form)
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
		"vm-name":                one("a VM name"),
		"vmss-name":              one("a scale set name"),
		"resource-group":         one("a resource group"),
		"vm-location":            one("a location"),
		"vm-tag":                 parts(2, true, "<tag key>:<value>"),
		"network-security-group": parts(2, false, "<resource group>:<network security group>"),
		"virtual-network":        one("a virtual network name"),
		"virtual-network-subnet": parts(2, false, "<virtual network>:<subnet>"),
	}
	return selector.Kind{
		Type:     Type,
		Producer: `NodeAttestor "azure_imds"`,
		Check:    func(v string) error { return selector.CheckKeyed(v, keys) },
	}
}
